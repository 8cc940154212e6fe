"""Dense probing shared by NYUv2 depth and ADE20K segmentation: readouts, heads, training data,
sliding windows, and the protocol runner.

The backbone is frozen (eval mode, forward under no_grad); only the head trains, on mmengine's
Runner. What differs between depth and segmentation (output activation, loss, padding value,
per-image score, aggregation) is a `DenseTarget` that each task module defines. What differs
between the reference codes (Pixio's ``evaluation/`` and DINOv2's mmseg/depth-toolbox configs) is
in each protocol's parameters: window placement and merging, padding, ``align_corners``, the
training rescale rule, schedules. docs/protocols.md lists every number and its reference.

Heads (`HEADS` registry, each a `HeadSpec` with its own parameters): ``linear`` (BatchNorm + 1×1
conv), ``dpt`` (Pixio's DPT head), ``bins`` (DINOv2 lin.1/lin.4: 256 depth bins), ``upernet``
(segmentation, MAE style; here on the frozen backbone — MAE's numbers fine-tune it). Every head
declares what it reads: which blocks (``layers``), with or without the final norm (``norm``), and
whether the mean CLS token is concatenated to every patch token (``cls``).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from evalsuite import engine
from evalsuite.contracts import Backbone, Metric, RunContext, TaskConfig, TaskOutput
from evalsuite.params import ParamError, Params, param
from evalsuite.registry import HEADS
from evalsuite.sampling import seeded

IGNORE = 255


# ---------------------------------------------------------------------------------------
# Readout: which blocks a head reads, and how
# ---------------------------------------------------------------------------------------
# DINOv2's depther (`dinov2/hub/depthers.py`): lin.4 blocks per depth; L keeps [4, 11, 17, 23] on purpose
DINOV2_DEPTH_BLOCKS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}

LAYER_SETS: dict[str, Callable[[Backbone], tuple[int, ...]]] = {
    "last": lambda b: (b.meta.depth - 1,),
    "last4": lambda b: tuple(range(b.meta.depth - 4, b.meta.depth)),
    "dense": lambda b: tuple(b.meta.default_layers),  # the family's 4 dense blocks (Pixio: depth//4·(s+1)−1)
    "dinov2": lambda b: DINOV2_DEPTH_BLOCKS.get(b.meta.depth, tuple(b.meta.depth // 4 * (s + 1) - 1 for s in range(4))),
}


@dataclass(frozen=True)
class Readout(Params):
    """The part of every head's parameters that says what it reads from the frozen backbone."""

    layers: str = param("last", "blocks read: last | last4 | dense (the family's 4) | dinov2 (DINOv2's depther lin.4)",
                        choices=tuple(LAYER_SETS))
    norm: bool = param(True, "apply the backbone's final norm to every block read")
    cls: str = param("mean", "mean: concatenate the mean CLS token to every patch token; none: patch tokens only",
                     choices=("mean", "none"))

    def layer_indices(self, backbone: Backbone) -> tuple[int, ...]:
        return LAYER_SETS[self.layers](backbone)


def read_maps(backbone: Backbone, images: torch.Tensor, layers: Sequence[int], readout: Readout) -> list[torch.Tensor]:
    """One B×C×h×w map per block: patch tokens, with the mean of the block's CLS tokens concatenated
    (``cls="mean"``: Pixio's readout with its 8 CLS tokens, DINOv2's with its one; CNNs have none)."""
    feats = backbone.forward_features(images, layers=layers, norm=readout.norm)
    maps = []
    for patch, cls in zip(feats.patch, feats.cls):
        if readout.cls == "mean" and cls.shape[1] > 0:
            patch = torch.cat([patch, cls.mean(dim=1)[..., None, None].expand(-1, -1, *patch.shape[-2:])], dim=1)
        maps.append(patch)
    return maps


def readout_dims(backbone: Backbone, layers: Sequence[int], readout: Readout) -> list[int]:
    """Channels of each map `read_maps` gives, probed with a small zero image."""
    p = backbone.meta.patch_size
    device = next(backbone.parameters()).device
    with torch.no_grad():
        maps = read_maps(backbone, torch.zeros(1, 3, 8 * p, 8 * p, device=device), layers, readout)
    return [m.shape[1] for m in maps]


# ---------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadSpec:
    """A registered head: its parameters (with its `Readout`) and how to build it. ``outputs`` is
    ``"logits"`` (the task's target turns them into predictions) or ``"depth"`` (metres already)."""

    name: str
    params: type[Params]
    build: Callable[..., nn.Module]  # (in_dims, out_channels, params, patch_size, depth_range) -> module
    outputs: str = "logits"
    description: str = ""


class LinearHead(nn.Module):
    """The linear probe of Pixio (``models/linear.py``) and DINOv2's segmentation BNHead: the last
    map → BatchNorm2d → 1×1 conv."""

    def __init__(self, in_dims: Sequence[int], out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dims[-1])
        self.conv = nn.Conv2d(in_dims[-1], out_channels, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.bn(maps[-1]))


class BinsHead(nn.Module):
    """DINOv2's depth BNHead (``classify=True``, ``norm_strategy="linear"``), whose BatchNorm is
    disabled in the reference: every map bilinearly resized to ``upsample`` × the first map's grid
    and concatenated, a 1×1 conv to ``bins`` logits, weights (ReLU(logit) + 0.1) normalised over
    bins, depth = Σ weight · bin, bins = linspace(min_depth, max_depth, bins)."""

    def __init__(self, in_dims: Sequence[int], bins: int, upsample: int, min_depth: float, max_depth: float):
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv2d(sum(in_dims), bins, 1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, bins))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = [s * self.upsample for s in maps[0].shape[-2:]]
        x = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)
        weights = torch.relu(self.conv(x)) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        return (weights * self.centres[None, :, None, None]).sum(dim=1, keepdim=True)


class ResidualConvUnit(nn.Module):
    """ReLU → 3×3 conv → ReLU → 3×3 conv, plus the input (DPT, no BatchNorm)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT's FeatureFusionBlock: (coarse + unit1(skip)) → unit2 → bilinear (align_corners=True) to
    ``size`` (×2 without one) → 1×1 conv."""

    def __init__(self, c: int, has_skip: bool = True):
        super().__init__()
        self.unit1, self.unit2, self.out = ResidualConvUnit(c), ResidualConvUnit(c), nn.Conv2d(c, c, 1)
        if not has_skip:
            # Pixio's deepest block builds unit1 and never calls it: kept so the head has the reference's
            # parameters (and initial RNG draws), frozen so that DDP needs no unused-parameter search.
            self.unit1.requires_grad_(False)
        self.has_skip = has_skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.unit1(skip)
        x = self.unit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out(x)


class DPTHead(nn.Module):
    """Pixio's DPT head (``evaluation/monodepth/models/dpt.py``, same in ``semseg``): the 4 maps are
    projected (1×1) to ``out_channels``, reassembled at ×4, ×2, ×1, ×½ of the token grid, brought
    to ``features`` channels (3×3, no bias), fused from coarse to fine, and decoded by 3×3 conv →
    ReLU → 1×1 conv at twice the finest level (H/2 for patch 16)."""

    def __init__(self, in_dims: Sequence[int], out_channels: int, features: int, widths: Sequence[int]):
        super().__init__()
        if len(in_dims) != 4 or len(widths) != 4:
            raise ValueError(f"DPT reads 4 blocks into 4 widths, got {len(in_dims)} blocks and widths {tuple(widths)}")
        self.project = nn.ModuleList(nn.Conv2d(d, w, 1) for d, w in zip(in_dims, widths))
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(widths[0], widths[0], 4, stride=4), nn.ConvTranspose2d(widths[1], widths[1], 2, stride=2),
            nn.Identity(), nn.Conv2d(widths[3], widths[3], 3, stride=2, padding=1)])
        self.layer_rn = nn.ModuleList(nn.Conv2d(w, features, 3, padding=1, bias=False) for w in widths)
        self.fusion = nn.ModuleList(FusionBlock(features, has_skip=i < 3) for i in range(4))
        self.output = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(True),
                                    nn.Conv2d(features, out_channels, 1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = [rn(rs(pj(m))) for m, pj, rs, rn in zip(maps, self.project, self.resize, self.layer_rn)]
        x = self.fusion[3](levels[3], size=levels[2].shape[-2:])
        x = self.fusion[2](x, levels[2], size=levels[1].shape[-2:])
        x = self.fusion[1](x, levels[1], size=levels[0].shape[-2:])
        x = self.fusion[0](x, levels[0])
        return self.output(x)


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UperNetHead(nn.Module):
    """UperNet (Xiao et al. 2018) on a ViT, as MAE's segmentation: 4 blocks become a ×4/×2/×1/×½
    pyramid (transposed convs / max-pool), a pyramid-pooling module (scales 1, 2, 3, 6) on the
    coarsest level, a top-down FPN, and a fused 3×3 conv before the classifier."""

    def __init__(self, in_dims: Sequence[int], out_channels: int, channels: int):
        super().__init__()
        if len(in_dims) != 4:
            raise ValueError(f"UperNet reads 4 blocks, got {len(in_dims)}")
        d = in_dims
        self.pyramid = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(d[0], d[0], 2, 2), nn.BatchNorm2d(d[0]), nn.GELU(), nn.ConvTranspose2d(d[0], d[0], 2, 2)),
            nn.ConvTranspose2d(d[1], d[1], 2, 2), nn.Identity(), nn.MaxPool2d(2, ceil_mode=True)])
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(d[3], channels, 1)) for s in (1, 2, 3, 6))
        self.ppm_out = conv_bn_relu(d[3] + 4 * channels, channels, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(d[i], channels, 1) for i in range(3))
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in range(3))
        self.fuse = conv_bn_relu(4 * channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(channels, out_channels, 1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = [up(m) for m, up in zip(maps, self.pyramid)]
        top = levels[3]
        pooled = [F.interpolate(m(top), size=top.shape[-2:], mode="bilinear", align_corners=False) for m in self.ppm]
        laterals = [lat(x) for lat, x in zip(self.lateral, levels[:3])] + [self.ppm_out(torch.cat([top, *pooled], 1))]
        for i in (2, 1, 0):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="bilinear", align_corners=False)
        outs = [self.fpn[i](laterals[i]) for i in range(3)] + [laterals[3]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]], 1))
        return self.classifier(fused)


@dataclass(frozen=True)
class LinearParams(Readout):
    pass


@dataclass(frozen=True)
class DPTParams(Readout):
    layers: str = param("dense", "blocks read (DPT reads 4)", choices=tuple(LAYER_SETS))
    features: int = param(256, "fusion width (Pixio: 256 for every encoder size)", min=1)
    widths: tuple[int, int, int, int] = param((256, 512, 1024, 1024), "reassembly widths (Pixio's out_channels)", min=1)


@dataclass(frozen=True)
class BinsParams(Readout):
    layers: str = param("dinov2", "lin.1 (last) or lin.4 (dinov2: DINOv2's depther blocks)", choices=("last", "dinov2"))
    norm: bool = param(False, "DINOv2's depther reads raw blocks (norm=False)")
    bins: int = param(256, "uniform depth bins", min=2)
    upsample: int = param(4, "the maps are resized to this × the token grid before the conv", min=1)


@dataclass(frozen=True)
class UperNetParams(Readout):
    layers: str = param("dense", "blocks read (UperNet reads 4)", choices=tuple(LAYER_SETS))
    channels: int = param(512, "width of the pyramid-pooling and FPN convs", min=1)


HEADS.register("linear", HeadSpec("linear", LinearParams, lambda dims, out, p, patch, depth_range: LinearHead(dims, out),
                                  description="BatchNorm + 1×1 conv on one block (Pixio's linear probe, DINOv2's BNHead)"))
HEADS.register("dpt", HeadSpec("dpt", DPTParams,
                               lambda dims, out, p, patch, depth_range: DPTHead(dims, out, p.features, p.widths),
                               description="Pixio's DPT: reassemble + fusion over 4 blocks (Ranftl et al. 2021)"))
HEADS.register("bins", HeadSpec("bins", BinsParams,
                                lambda dims, out, p, patch, depth_range: BinsHead(dims, p.bins, p.upsample, *depth_range),
                                outputs="depth", description="DINOv2 lin.1/lin.4 depth bins (linear normalisation)"))
HEADS.register("upernet", HeadSpec("upernet", UperNetParams,
                                   lambda dims, out, p, patch, depth_range: UperNetHead(dims, out, channels=p.channels),
                                   description="UperNet on a 4-level pyramid (MAE's segmentation head)"))


# ---------------------------------------------------------------------------------------
# What depth and segmentation each define
# ---------------------------------------------------------------------------------------
class DenseTarget(Protocol):
    """The task-specific half of a dense protocol (depth: `tasks.nyuv2`, segmentation: `tasks.ade20k`)."""

    pad_value: int  # fill of target pixels added by padding
    higher_is_better: tuple[str, ...]

    def datasets(self, root, params) -> tuple[Dataset, Dataset, dict]: ...
    def out_channels(self, root, params) -> int: ...
    def predict(self, head_out: torch.Tensor, head: HeadSpec, params) -> torch.Tensor: ...
    def loss(self, prediction: torch.Tensor, target: torch.Tensor, params) -> torch.Tensor: ...
    def as_target(self, target: torch.Tensor) -> torch.Tensor: ...
    def score(self, prediction: torch.Tensor, target: torch.Tensor, params): ...
    def aggregate(self, scores: list, params, n_out: int) -> tuple[dict[str, float], dict[str, list[float]]]: ...


# ---------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------
def centre_padding(size: int, multiple: int) -> tuple[int, int]:
    """DINOv2's CenterPadding: (before, after) with the odd pixel after."""
    pad = math.ceil(size / multiple) * multiple - size
    return pad // 2, pad - pad // 2


def pad_to_multiple(images: torch.Tensor, multiple: int, mode: str) -> torch.Tensor:
    """``right``: zeros right/bottom; ``centre``: DINOv2's CenterPadding. Zeros of the normalised
    image, i.e. the mean colour."""
    H, W = images.shape[-2:]
    if mode == "centre":
        (top, bottom), (left, right) = centre_padding(H, multiple), centre_padding(W, multiple)
        return F.pad(images, (left, right, top, bottom))
    return F.pad(images, (0, -W % multiple, 0, -H % multiple))


def window_starts(length: int, window: int, stride: int, placement: str = "flush") -> list[int]:
    """Window offsets covering [0, length).

    ``flush`` (mmseg's slide): every ``stride``, the last window moved flush with the end.
    ``pixio`` (Pixio's ``evaluate``/``infer_model``): 0, stride, 2·stride, … while the offset is
    inside the image; windows that run past the end are zero-padded by the caller.
    """
    if placement == "pixio":
        return list(range(0, length, stride))
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def slide_inference(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, window: int, stride: int,
                    placement: str = "flush", merge: str = "mean", chunk: int = 32) -> torch.Tensor:
    """Predictions of window×window crops merged over the image.

    ``merge="mean"`` averages the overlapping outputs (mmseg's slide mode; Pixio's depth);
    ``"softmax-sum"`` sums the windows' softmax probabilities over classes (Pixio's segmentation).
    Images (or windows, with ``placement="pixio"``) smaller than the window are zero-padded to it
    bottom/right, then cropped back. Crops of one size run through the model ``chunk`` at a time.
    """
    B, _, H, W = images.shape
    ys = window_starts(H if placement == "pixio" else max(H, window), window, stride, placement)
    xs = window_starts(W if placement == "pixio" else max(W, window), window, stride, placement)
    Hp, Wp = max(H, ys[-1] + window), max(W, xs[-1] + window)
    padded = F.pad(images, (0, Wp - W, 0, Hp - H))
    boxes = [(y, x) for y in ys for x in xs]
    total, count = None, torch.zeros(1, 1, Hp, Wp, device=images.device)
    for start in range(0, len(boxes), chunk):
        part = boxes[start : start + chunk]
        crops = torch.cat([padded[..., y : y + window, x : x + window] for y, x in part])  # (len(part)·B)×3×w×w
        outs = predict(crops)
        if merge == "softmax-sum":
            outs = outs.softmax(dim=1)
        for (y, x), out in zip(part, outs.split(B)):
            if total is None:
                total = torch.zeros(B, out.shape[1], Hp, Wp, device=images.device, dtype=out.dtype)
            total[..., y : y + window, x : x + window] += out
            count[..., y : y + window, x : x + window] += 1
    merged = total if merge == "softmax-sum" else total / count
    return merged[..., :H, :W]


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------
def dense_model(backbone: Backbone, head: nn.Module, head_spec: HeadSpec, layers: Sequence[int], readout: Readout,
                target: DenseTarget, params):
    """An mmengine `BaseModel`: frozen backbone (eval mode, no_grad) + trainable head.

    ``predict`` pads the input to a multiple of the patch (``params.padding``), runs backbone and head,
    and brings the head's output to the input size: bilinear with ``params.align_corners`` (Pixio:
    True), then cropped back (``right``) or, as DINOv2 does with centre padding, the padded
    prediction resized onto the unpadded image."""
    from mmengine.model import BaseModel

    patch = backbone.meta.patch_size

    class DenseModel(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = backbone.requires_grad_(False)
            self.head = head

        def train(self, mode: bool = True):
            super().train(mode)
            self.backbone.eval()
            return self

        def predict(self, images: torch.Tensor) -> torch.Tensor:
            H, W = images.shape[-2:]
            x = pad_to_multiple(images, patch, params.padding)
            with torch.no_grad():
                maps = read_maps(self.backbone, x, layers, readout)
            out = self.head(maps)
            if params.padding == "centre":
                out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=params.align_corners)
            else:
                out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=params.align_corners)[..., :H, :W]
            return target.predict(out, head_spec, params)

        def forward(self, images, targets=None, mode: str = "tensor"):
            out = self.predict(images)
            if mode != "loss":
                return out
            return {"loss": target.loss(out, targets, params)}

    return DenseModel()


# ---------------------------------------------------------------------------------------
# Training data
# ---------------------------------------------------------------------------------------
def long_side_rescale(rgb: np.ndarray, label: np.ndarray, gen: torch.Generator, ratio: tuple[float, float]):
    """Pixio's ``semseg/data/transform.py::resize``: the new long side is an integer drawn uniformly
    from [int(lo·L), int(hi·L)] of the image's own long side L; the short side is
    int(short·new/L + 0.5); image bicubic and mask nearest, with PIL."""
    h, w = rgb.shape[:2]
    long = max(h, w)
    new = int(torch.randint(int(long * ratio[0]), int(long * ratio[1]) + 1, (1,), generator=gen))
    if h > w:
        oh, ow = new, int(1.0 * w * new / h + 0.5)
    else:
        ow, oh = new, int(1.0 * h * new / w + 0.5)
    image = np.array(Image.fromarray(rgb).resize((ow, oh), Image.BICUBIC))
    mask = np.array(Image.fromarray(label).resize((ow, oh), Image.NEAREST))
    return image, mask


def short_side_rescale(image: torch.Tensor, target: torch.Tensor, gen: torch.Generator, ratio: tuple[float, float],
                       crop: tuple[int, int]):
    """mmseg's RandomResize (DINOv2's ADE20K config: scale (∞, crop) × U(lo, hi), aspect kept): the
    short side becomes crop·r (bilinear image, nearest mask)."""
    lo, hi = ratio
    r = lo + (hi - lo) * torch.rand(1, generator=gen).item()
    H, W = image.shape[-2:]
    factor = min(crop) * r / min(H, W)
    size = (max(1, int(H * factor + 0.5)), max(1, int(W * factor + 0.5)))
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    target = F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].to(target.dtype)
    return image, target


@dataclass(frozen=True)
class PhotometricDraws:
    """The random numbers of one mmseg PhotoMetricDistortion call (None: that step is skipped)."""

    brightness: float | None
    contrast: float | None
    contrast_first: bool
    saturation: float | None
    hue: int | None

    @classmethod
    def draw(cls, gen: torch.Generator) -> PhotometricDraws:
        """mmseg's defaults: brightness ±32, contrast and saturation ×U(0.5, 1.5), hue ±18 (integer in
        [−18, 17], numpy's ``randint``), each step with probability ½."""
        u = torch.rand(9, generator=gen).tolist()
        return cls(brightness=-32 + 64 * u[1] if u[0] < 0.5 else None, contrast=0.5 + u[3] if u[2] < 0.5 else None,
                   contrast_first=u[4] < 0.5, saturation=0.5 + u[6] if u[5] < 0.5 else None,
                   hue=math.floor(-18 + 36 * u[8]) if u[7] < 0.5 else None)


def photometric_distortion(rgb: np.ndarray, draws: PhotometricDraws) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on a uint8 image (given in RGB; mmseg works in BGR, which only
    matters for the HSV conversion): every step is float → clip to 0–255 → uint8, as in mmseg."""
    import cv2

    def convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if draws.brightness is not None:
        bgr = convert(bgr, beta=draws.brightness)
    if draws.contrast_first and draws.contrast is not None:
        bgr = convert(bgr, alpha=draws.contrast)
    if draws.saturation is not None:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=draws.saturation)
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if draws.hue is not None:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + draws.hue) % 180
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not draws.contrast_first and draws.contrast is not None:
        bgr = convert(bgr, alpha=draws.contrast)
    return np.ascontiguousarray(bgr[..., ::-1])


def random_crop_box(target: torch.Tensor, crop: tuple[int, int], draw: Callable[[int], int], cat_max_ratio: float | None,
                    ignore: int) -> tuple[int, int]:
    """(top, left) of a random crop, offsets ``draw(margin + 1)``. With ``cat_max_ratio``, mmseg's
    RandomCrop: while no more than 10 checks have failed, a crop in which one class covers
    ``cat_max_ratio`` or more of the labelled pixels (or only one class is present) is drawn again;
    the 11th draw is kept unchecked."""
    H, W = target.shape[-2:]
    ch, cw = crop

    def box() -> tuple[int, int]:
        return draw(max(H - ch, 0) + 1), draw(max(W - cw, 0) + 1)

    y, x = box()
    if cat_max_ratio is not None:
        for _ in range(10):
            labels = target[y : y + ch, x : x + cw]
            counts = torch.bincount(labels[labels != ignore].long().flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
                break
            y, x = box()
    return y, x


def rotate(image: torch.Tensor, target: torch.Tensor, degrees: float):
    """Rotate about the centre (image bilinear, target nearest, borders 0)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = TF.rotate(image, degrees, interpolation=InterpolationMode.BILINEAR, fill=0.0)
    target = TF.rotate(target[None].float(), degrees, interpolation=InterpolationMode.NEAREST, fill=0.0)[0].to(target.dtype)
    return image, target


def colour_augment(image: torch.Tensor, gen: torch.Generator, gamma=(0.9, 1.1), brightness=(0.75, 1.25),
                   colour=(0.9, 1.1)) -> torch.Tensor:
    """The depth toolbox's ColorAug on a [0, 1] image. Unlike BTS/AdaBins it runs on 0–255 values:
    ``pixel ** γ`` with γ ∈ [0.9, 1.1] on 0–255 (a strong change), × brightness, × a gain per channel,
    clipped to 0–255."""
    u = torch.rand(5, generator=gen).tolist()
    image = (image * 255) ** (gamma[0] + (gamma[1] - gamma[0]) * u[0])
    image = image * (brightness[0] + (brightness[1] - brightness[0]) * u[1])
    gains = torch.tensor([colour[0] + (colour[1] - colour[0]) * v for v in u[2:5]]).view(3, 1, 1)
    return (image * gains).clamp(0, 255) / 255


class DenseTrainSet(Dataset):
    """The protocol's training augmentation of (rgb, target) pairs; item (index, epoch), seeded.

    Order (both references): rescale (Pixio: long side × [0.5, 2] with PIL; DINOv2: short side ×
    U(0.5, 2)), rotation (DINOv2 depth), random crop (pad first, as Pixio does; mmseg pads after the
    crop, which is the same geometry), flip, photometric or colour augmentation, normalisation.
    Padding is black before normalisation (Pixio) or zero after it (mmseg's Pad: the mean colour).
    """

    def __init__(self, base: Dataset, target: DenseTarget, p, mean, std, seed: int):
        self.base, self.target, self.p, self.seed = base, target, p, seed
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        gen, p = seeded(self.seed, epoch, index, 5), self.p
        rgb, target = self.base[index]
        if p.rescale_rule == "long-side":
            rgb, target = long_side_rescale(np.asarray(rgb), np.asarray(target), gen, p.rescale)
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
        target = torch.from_numpy(np.ascontiguousarray(target))
        if p.rescale_rule == "short-side":
            image, target = short_side_rescale(image, target, gen, p.rescale, p.crop)
        if p.rotate and torch.rand(1, generator=gen).item() < 0.5:
            image, target = rotate(image, target, -p.rotate + 2 * p.rotate * torch.rand(1, generator=gen).item())
        ch, cw = p.crop
        H, W = image.shape[-2:]
        black = p.train_pad == "black"
        if black:
            image = F.pad(image, (0, max(0, cw - W), 0, max(0, ch - H)))
        target = F.pad(target, (0, max(0, cw - W), 0, max(0, ch - H)), value=self.target.pad_value)
        y, x = random_crop_box(target, (ch, cw), lambda n: int(torch.randint(0, n, (1,), generator=gen)), p.cat_max_ratio,
                               IGNORE)
        image, target = image[:, y : y + ch, x : x + cw], target[y : y + ch, x : x + cw]
        if torch.rand(1, generator=gen).item() < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        if p.photometric:
            uint8 = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            image = torch.from_numpy(photometric_distortion(uint8, PhotometricDraws.draw(gen))).permute(2, 0, 1).float() / 255
        if p.colour_augment and torch.rand(1, generator=gen).item() < 0.5:
            image = colour_augment(image, gen)
        image = (image - self.mean) / self.std
        if not black:  # mmseg's Pad after Normalize: zeros, i.e. the mean colour
            image = F.pad(image, (0, cw - image.shape[-1], 0, ch - image.shape[-2]))
        return image, self.target.as_target(target)


def collate(batch):
    images, targets = zip(*batch)
    return {"images": torch.stack(images), "targets": torch.stack(targets)}


def to_input(rgb: np.ndarray, mean, std, device) -> torch.Tensor:
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    return ((image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None].to(device)


# ---------------------------------------------------------------------------------------
# Protocol parameters and runner
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseParams(Params):
    """Pixio's dense protocol (``evaluation/monodepth``, ``evaluation/semseg``): a frozen encoder, a
    head trained 60 epochs on random 256 crops, sliding-window inference. Tasks and the DINOv2
    protocols override fields; docs/protocols.md gives each value's reference line."""

    head: str = param("dpt", "the head (see `evalsuite list heads`)")
    crop: tuple[int, int] = param((256, 256), "training crop (h, w)", min=1)
    epochs: int | None = param(60, "training epochs (none: use iterations)", min=1)
    iterations: int | None = param(None, "training iterations (none: use epochs)", min=1)
    batch_size: int = param(16, "global training batch", min=1)
    lr: float = param(2e-4, "AdamW learning rate", min=0, min_exclusive=True)
    weight_decay: float = param(0.01, "AdamW weight decay (every head parameter)", min=0)
    schedule: str = param("poly", "poly: warm-up then (1 − t)^power over the rest (Pixio); mmcv-poly / mmcv-cosine: "
                                  "mmcv's hooks, the warm-up multiplying a decay over the whole run (DINOv2)",
                          choices=("poly", "mmcv-poly", "mmcv-cosine"))
    poly_power: float = param(0.9, "power of the poly schedules", min=0, min_exclusive=True)
    warmup: float = param(0.0, "share of iterations with linear warm-up", min=0, max=1, max_exclusive=True)
    warmup_ratio: float = param(0.0, "warm-up starts at this fraction of the lr", min=0, max=1)
    beta1_cycle: bool = param(False, "mmcv's OneCycle momentum on AdamW's β1 (0.95 → 0.85 → 0.95; DINOv2 depth)")
    grad_clip: float | None = param(None, "gradient-norm clipping (none: off)", min=0, min_exclusive=True)
    rescale_rule: str = param("none", "training rescale: none | long-side (Pixio: new long side an integer in "
                                      "[lo·L, hi·L], PIL bicubic) | short-side (mmseg: short side crop·U(lo, hi))",
                              choices=("none", "long-side", "short-side"))
    rescale: tuple[float, float] = param((0.5, 2.0), "ratio range of the training rescale", min=0, min_exclusive=True)
    rotate: float = param(0.0, "random rotation ±degrees with probability ½ (0: none)", min=0)
    cat_max_ratio: float | None = param(None, "retry crops where one class covers more than this share (mmseg)",
                                        min=0, max=1, min_exclusive=True)
    photometric: bool = param(False, "mmseg's PhotoMetricDistortion")
    colour_augment: bool = param(False, "the depth toolbox's ColorAug (gamma, brightness, colour) with probability ½")
    train_pad: str = param("black", "pad of crops larger than the image: black (before normalisation) | mean (after)",
                           choices=("black", "mean"))
    align_corners: bool = param(True, "bilinear upsampling of the head's output (Pixio: True)")
    padding: str = param("right", "input padding to a multiple of the patch: right (cropped back) | centre (DINOv2, "
                                  "prediction resized onto the image)", choices=("right", "centre"))
    inference: str = param("slide", "slide: windows; whole: the image at once", choices=("slide", "whole"))
    window: int = param(256, "sliding-window size", min=1)
    stride: int = param(170, "sliding-window stride", min=1)
    placement: str = param("pixio", "windows at 0, stride, … zero-padded (pixio) | the last flush with the end (flush)",
                           choices=("pixio", "flush"))
    flip_tta: bool = param(False, "average with the prediction of the flipped image")

    def check(self) -> None:
        if (self.epochs is None) == (self.iterations is None):
            raise ParamError("give epochs or iterations, not both (set the other to none)")


# Pixio: AdamW 1e-4 for DPT, 2e-4 for the linear head
PIXIO_HEAD_LR = {"dpt": {"lr": 1e-4}}
# The mini world's protocol: tiny crops and windows and a higher learning rate, so a head learns
# something in the seconds the quickstart can spend (recorded in every mini record).
DENSE_MINI = {"epochs": 10, "batch_size": 8, "crop": (128, 128), "window": 128, "stride": 128, "lr": 5e-3,
              "features": 64, "widths": (64, 128, 256, 256)}


def training_iterations(p, n: int) -> int:
    """Iterations of the run: ``iterations``, or ``epochs`` × full global batches per epoch (the last
    partial batch is dropped, as both references' loaders do)."""
    if p.iterations is not None:
        return p.iterations
    return engine.iterations(p.epochs, max(1, n // min(p.batch_size, n)), n, min(p.batch_size, n))


def run_dense(backbone: Backbone, cfg: TaskConfig, ctx: RunContext, target: DenseTarget) -> TaskOutput:
    """Train the configured head on the frozen backbone, then score the test split."""
    p, head_params = cfg.params, cfg.components["head"]
    head_spec: HeadSpec = HEADS.get(p.head)
    train_base, test_base, info = target.datasets(ctx.data_root, p)
    layers = head_params.layer_indices(backbone)
    in_dims = readout_dims(backbone, layers, head_params)
    n_out = target.out_channels(ctx.data_root, p)
    depth_range = (getattr(p, "min_depth", 1e-3), getattr(p, "max_depth", 10.0))
    head = head_spec.build(in_dims, n_out, head_params, backbone.meta.patch_size, depth_range)
    model = dense_model(backbone, head, head_spec, layers, head_params, target, p).to(ctx.device)
    pre = backbone.meta.preprocess_for(cfg.protocol.name)
    trainset = DenseTrainSet(train_base, target, p, pre.mean, pre.std, ctx.seed)
    iters = training_iterations(p, len(trainset))
    work_dir = ctx.work_dir or tempfile.mkdtemp(prefix="evalsuite-")
    schedule = engine.Schedule(p.schedule, iters, warmup_iters=int(p.warmup * iters), warmup_ratio=p.warmup_ratio,
                               power=p.poly_power, min_ratio=1e-8 if p.schedule == "mmcv-cosine" else 0.0)
    model = engine.train(model, trainset, collate=collate, batch_size=min(p.batch_size, len(trainset)), iters=iters,
                         lr=p.lr, weight_decay=p.weight_decay, schedule=schedule, grad_clip=p.grad_clip,
                         betas=(0.95, 0.999) if p.beta1_cycle else (0.9, 0.999),
                         beta1_schedule=engine.one_cycle_momentum(iters) if p.beta1_cycle else None,
                         work_dir=work_dir, seed=ctx.seed, resume=True, checkpoint_interval=ctx.checkpoint_interval,
                         amp_dtype=ctx.amp_dtype)
    metrics, samples = evaluate(model, target, test_base, p, pre, ctx, n_out)
    out = [Metric(name, value, cfg.protocol.report_split, name in target.higher_is_better,
                  primary=name == cfg.primary_metric, definition=target.definition(name, p))
           for name, value in metrics.items()]
    # per-image scores (depth) average to their metric; dataset-level ones (mIoU) carry per-image areas
    return TaskOutput(out, {**info, "layers": list(layers), "iterations": iters, "selection": "last iteration"},
                      per_sample={k: v for k, v in samples.items() if not isinstance(v, dict)},
                      dataset_samples={k: v for k, v in samples.items() if isinstance(v, dict)})


@torch.inference_mode()
def evaluate(model, target: DenseTarget, test_base: Dataset, p, pre, ctx: RunContext, n_out: int):
    model.eval()

    def infer(x: torch.Tensor) -> torch.Tensor:
        if p.inference == "slide":
            return slide_inference(model.predict, x, p.window, p.stride, p.placement, target.merge(p))
        return model.predict(x)

    scores = []
    for rgb, truth in test_base:
        x = to_input(rgb, pre.mean, pre.std, ctx.device)
        with ctx.autocast():
            out = target.infer(infer, x, p)
            if p.flip_tta:
                out = (out + target.infer(infer, x.flip(-1), p).flip(-1)) / 2
        if not torch.isfinite(out).all():  # an argmax over NaN would still give an mIoU
            raise FloatingPointError("non-finite predictions: the head diverged")
        scores.append(target.score(out.float().cpu(), torch.from_numpy(np.ascontiguousarray(truth)), p))
    return target.aggregate(scores, p, n_out)
