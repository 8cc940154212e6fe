"""Dense probing shared by NYUv2 depth and ADE20K segmentation: readouts, heads, training data,
sliding windows, and the protocol runner.

The backbone is frozen (eval mode, forward under no_grad); only the head trains, on mmengine's
Runner. What differs between depth and segmentation (output activation, loss, padding value,
per-image score, aggregation) is a `DenseTarget` that each task module defines.

Heads (`HEADS` registry, each a `HeadSpec` with its own parameters): ``linear`` (BatchNorm + 1×1
conv), ``dpt`` (reassemble + fusion over 4 blocks), ``bins`` (DINOv2 lin.1/lin.4: 256 depth bins),
``upernet`` (segmentation, MAE style; here on the frozen backbone — MAE's numbers fine-tune it).
Every head declares what it reads: which blocks (``layers``), with or without the final norm
(``norm``), and whether the mean CLS token is concatenated to every patch (``cls``).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from evalsuite import engine
from evalsuite.contracts import Backbone, Metric, RunContext, TaskConfig, TaskOutput
from evalsuite.params import Params, param
from evalsuite.registry import HEADS
from evalsuite.sampling import seeded

IGNORE = 255


# ---------------------------------------------------------------------------------------
# Readout: which blocks a head reads, and how
# ---------------------------------------------------------------------------------------
LAYER_SETS: dict[str, Callable[[Backbone], tuple[int, ...]]] = {
    "last": lambda b: (b.meta.depth - 1,),
    "last4": lambda b: tuple(range(b.meta.depth - 4, b.meta.depth)),
    "dense": lambda b: tuple(b.meta.default_layers),  # the family's 4 dense blocks (Pixio: depth//4·(s+1)−1)
}


@dataclass(frozen=True)
class Readout(Params):
    """The part of every head's parameters that says what it reads from the frozen backbone."""

    layers: str = param("last", "blocks read: last | last4 | dense (the family's 4 dense blocks)",
                        choices=tuple(LAYER_SETS))
    norm: bool = param(True, "apply the backbone's final norm to every block read")
    cls: str = param("mean", "mean: concatenate the mean CLS token to every patch token; none: patch tokens only",
                     choices=("mean", "none"))

    def layer_indices(self, backbone: Backbone) -> tuple[int, ...]:
        return LAYER_SETS[self.layers](backbone)


def read_maps(backbone: Backbone, images: torch.Tensor, layers: Sequence[int], readout: Readout) -> list[torch.Tensor]:
    """One B×C×h×w map per block: patch tokens, with the mean of the block's CLS tokens concatenated
    (``cls="mean"``, Pixio's readout; CNNs have no CLS tokens and give patch maps only)."""
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
    """Pixio's linear probe: the last map → BatchNorm2d → 1×1 conv."""

    def __init__(self, in_dims: Sequence[int], out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dims[-1])
        self.conv = nn.Conv2d(in_dims[-1], out_channels, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.bn(maps[-1]))


class BinsHead(nn.Module):
    """DINOv2's depth probe: the maps concatenated → BN → 1×1 conv to ``bins`` bins, ×4 bilinear
    upsampling, softmax over bins, depth = Σ p·bin centre (uniform in [min_depth, max_depth])."""

    def __init__(self, in_dims: Sequence[int], bins: int, min_depth: float, max_depth: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(sum(in_dims))
        self.conv = nn.Conv2d(sum(in_dims), bins, 1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, bins))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        logits = F.interpolate(self.conv(self.bn(torch.cat(maps, dim=1))), scale_factor=4, mode="bilinear",
                               align_corners=False)
        return (logits.softmax(dim=1) * self.centres[None, :, None, None]).sum(dim=1, keepdim=True)


class ResidualConvUnit(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    def __init__(self, c: int, skip: bool = True):
        super().__init__()
        # the deepest block has no skip input: no unit for it (DDP refuses parameters without gradients)
        self.skip_unit = ResidualConvUnit(c) if skip else None
        self.unit, self.out = ResidualConvUnit(c), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:  # odd token grids make the coarse path one pixel off: follow the skip's grid
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + self.skip_unit(skip)
        x = self.unit(x)
        return self.out(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class DPTHead(nn.Module):
    """DPT (Ranftl et al. 2021) on 4 blocks: reassemble at ×4, ×2, ×1, ×½ of the token grid,
    3×3 convs to ``features`` channels, fusion from coarse to fine, and a small conv head."""

    def __init__(self, in_dims: Sequence[int], out_channels: int, features: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        if len(in_dims) != 4:
            raise ValueError(f"DPT reads 4 blocks, got {len(in_dims)}")
        widths = (features // 2, features, features * 2, features * 2)
        self.project = nn.ModuleList(nn.Conv2d(d, w, 1) for d, w in zip(in_dims, widths))
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(widths[0], widths[0], 4, stride=4), nn.ConvTranspose2d(widths[1], widths[1], 2, stride=2),
            nn.Identity(), nn.Conv2d(widths[3], widths[3], 3, stride=2, padding=1)])
        self.layer_rn = nn.ModuleList(nn.Conv2d(w, features, 3, padding=1, bias=False) for w in widths)
        self.fusion = nn.ModuleList(FusionBlock(features, skip=i < 3) for i in range(4))
        self.head_in = nn.Conv2d(features, features // 2, 3, padding=1)
        self.head_out = nn.Sequential(nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, out_channels, 1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = [rn(rs(pj(m))) for m, pj, rs, rn in zip(maps, self.project, self.resize, self.layer_rn)]
        x = self.fusion[3](levels[3])
        for i in (2, 1, 0):
            x = self.fusion[i](x, levels[i])
        # DPT's last ×2 brings patch-16 models to full resolution; go to grid × patch for any patch size
        h, w = maps[0].shape[-2:]
        x = F.interpolate(self.head_in(x), size=(h * self.patch_size, w * self.patch_size), mode="bilinear", align_corners=True)
        return self.head_out(x)


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
    features: int = param(256, "fusion width; reassembly widths are features × (½, 1, 2, 2)", min=2)


@dataclass(frozen=True)
class BinsParams(Readout):
    layers: str = param("last4", "lin.1 (last) or lin.4 (last4)", choices=("last", "last4"))
    bins: int = param(256, "uniform depth bins", min=2)


@dataclass(frozen=True)
class UperNetParams(Readout):
    layers: str = param("dense", "blocks read (UperNet reads 4)", choices=tuple(LAYER_SETS))
    channels: int = param(512, "width of the pyramid-pooling and FPN convs", min=1)


HEADS.register("linear", HeadSpec("linear", LinearParams, lambda dims, out, p, patch, depth_range: LinearHead(dims, out),
                                  description="BatchNorm + 1×1 conv on one block (Pixio's linear probe)"))
HEADS.register("dpt", HeadSpec("dpt", DPTParams,
                               lambda dims, out, p, patch, depth_range: DPTHead(dims, out, features=p.features, patch_size=patch),
                               description="reassemble + fusion over 4 blocks (Ranftl et al. 2021)"))
HEADS.register("bins", HeadSpec("bins", BinsParams,
                                lambda dims, out, p, patch, depth_range: BinsHead(dims, p.bins, *depth_range),
                                outputs="depth", description="DINOv2 lin.1/lin.4 depth bins"))
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
    def aggregate(self, scores: list, params, n_out: int) -> dict[str, float]: ...


# ---------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------
def predict_padded(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad right/bottom to a multiple of the patch (DINOv2's rule), predict, crop back."""
    H, W = images.shape[-2:]
    padded = F.pad(images, (0, -W % multiple, 0, -H % multiple))
    return predict(padded)[..., :H, :W]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): every ``stride``, the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def slide_inference(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, window: int, stride: int,
                    multiple: int, chunk: int = 32) -> torch.Tensor:
    """Average the predictions of overlapping window×window crops (mmseg's 'slide' mode).

    Images smaller than the window are zero-padded to it (as mmseg pads), then cropped back. The
    crops of an image share one size, so they run through the model ``chunk`` at a time.
    """
    B, _, H, W = images.shape
    padded = F.pad(images, (0, max(0, window - W), 0, max(0, window - H)))
    Hp, Wp = padded.shape[-2:]
    boxes = [(y, x) for y in window_starts(Hp, window, stride) for x in window_starts(Wp, window, stride)]
    h, w = min(window, Hp), min(window, Wp)
    total, count = None, torch.zeros(1, 1, Hp, Wp, device=images.device)
    for start in range(0, len(boxes), chunk):
        part = boxes[start : start + chunk]
        crops = torch.cat([padded[..., y : y + h, x : x + w] for y, x in part])  # (len(part)·B)×3×h×w
        outs = predict_padded(predict, crops, multiple).split(B)
        for (y, x), out in zip(part, outs):
            if total is None:
                total = torch.zeros(B, out.shape[1], Hp, Wp, device=images.device, dtype=out.dtype)
            total[..., y : y + h, x : x + w] += out
            count[..., y : y + h, x : x + w] += 1
    return (total / count)[..., :H, :W]


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------
def dense_model(backbone: Backbone, head: nn.Module, head_spec: HeadSpec, layers: Sequence[int], readout: Readout,
                target: DenseTarget, params):
    """An mmengine `BaseModel`: frozen backbone (eval mode, no_grad) + trainable head."""
    from mmengine.model import BaseModel

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
            with torch.no_grad():
                maps = read_maps(self.backbone, images, layers, readout)
            out = F.interpolate(self.head(maps), size=images.shape[-2:], mode="bilinear", align_corners=False)
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
@dataclass
class CropConfig:
    size: tuple[int, int]
    rescale: tuple[float, float] | None  # mmseg RandomResize ratio range on a (4·crop, crop) scale; None = off
    flip: bool = True


class DenseTrainSet(Dataset):
    """Random (rescale,) pad, crop and flip of (rgb, target) pairs; item (index, epoch), seeded."""

    def __init__(self, base: Dataset, target: DenseTarget, crop: CropConfig, mean, std, seed: int):
        self.base, self.target, self.crop, self.seed = base, target, crop, seed
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        gen = seeded(self.seed, epoch, index, 5)
        rgb, target = self.base[index]
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
        target = torch.from_numpy(np.ascontiguousarray(target))
        ch, cw = self.crop.size
        if self.crop.rescale is not None:
            lo, hi = self.crop.rescale
            ratio = lo + (hi - lo) * torch.rand(1, generator=gen).item()
            H, W = image.shape[-2:]
            factor = min(4 * max(ch, cw) * ratio / max(H, W), min(ch, cw) * ratio / min(H, W))
            size = (max(1, round(H * factor)), max(1, round(W * factor)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            target = F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].to(target.dtype)
        H, W = image.shape[-2:]
        image = F.pad(image, (0, max(0, cw - W), 0, max(0, ch - H)))
        target = F.pad(target, (0, max(0, cw - W), 0, max(0, ch - H)), value=self.target.pad_value)
        H, W = image.shape[-2:]
        y = int(torch.randint(0, H - ch + 1, (1,), generator=gen))
        x = int(torch.randint(0, W - cw + 1, (1,), generator=gen))
        image, target = image[:, y : y + ch, x : x + cw], target[y : y + ch, x : x + cw]
        if self.crop.flip and torch.rand(1, generator=gen).item() < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        return (image - self.mean) / self.std, self.target.as_target(target)


def collate(batch):
    images, targets = zip(*batch)
    return {"images": torch.stack(images), "targets": torch.stack(targets)}


def to_input(rgb: np.ndarray, mean, std, device) -> torch.Tensor:
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    return ((image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None].to(device)


def iterations(epochs: int, n: int, batch_size: int) -> int:
    return max(2, epochs * math.ceil(n / batch_size))


# ---------------------------------------------------------------------------------------
# Protocol parameters and runner
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseParams(Params):
    """Pixio's dense protocol (``evaluation/monodepth``, ``evaluation/semseg``): a frozen encoder, a
    head trained 60 epochs on random 256 crops, sliding-window inference. Tasks add their own fields."""

    head: str = param("dpt", "the head (see `evalsuite list heads`)")
    crop: tuple[int, int] = param((256, 256), "training crop (h, w)", min=1)
    epochs: int = param(60, "training epochs", min=1)
    batch_size: int = param(16, "global training batch", min=1)
    lr: float = param(2e-4, "AdamW learning rate", min=0, min_exclusive=True)
    weight_decay: float = param(0.01, "AdamW weight decay", min=0)
    warmup: float = param(0.1, "share of iterations with linear warm-up", min=0, max=1)
    inference: str = param("slide", "slide: overlapping windows; whole: the padded image at once",
                           choices=("slide", "whole"))
    window: int = param(256, "sliding-window size", min=1)
    stride: int = param(170, "sliding-window stride", min=1)
    flip_tta: bool = param(False, "average with the prediction of the flipped image")
    checkpoint_interval: int = param(0, "iterations between checkpoints (0: at the end)", min=0, operational=True)


DENSE_HEAD_LR = {"dpt": {"lr": 1e-4}}  # Pixio: AdamW 1e-4 for DPT, 2e-4 for the linear head (and bins)
# The mini world's protocol: tiny crops, non-overlapping windows and a higher learning rate, so a
# head learns something in the seconds the quickstart can spend (recorded in every mini record).
DENSE_MINI = {"epochs": 10, "batch_size": 8, "crop": (128, 128), "window": 128, "stride": 128, "features": 64, "lr": 5e-3}


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
    trainset = DenseTrainSet(train_base, target, CropConfig(tuple(p.crop), getattr(p, "rescale", None) or None),
                             pre.mean, pre.std, ctx.seed)
    iters = iterations(p.epochs, len(trainset), p.batch_size)
    work_dir = ctx.work_dir or tempfile.mkdtemp(prefix="evalsuite-")
    model = engine.train(model, trainset, collate=collate, batch_size=min(p.batch_size, len(trainset)), iters=iters,
                         lr=p.lr, weight_decay=p.weight_decay, warmup_iters=int(p.warmup * iters), work_dir=work_dir,
                         seed=ctx.seed, resume=True, checkpoint_interval=p.checkpoint_interval, amp_dtype=ctx.amp_dtype)
    metrics = evaluate(model, target, test_base, p, pre, backbone.meta.patch_size, ctx, n_out)
    out = [Metric(name, value, cfg.protocol.report_split, name in target.higher_is_better,
                  primary=name == cfg.primary_metric) for name, value in metrics.items()]
    return TaskOutput(out, {**info, "layers": list(layers), "iterations": iters, "selection": "last epoch"})


@torch.inference_mode()
def evaluate(model, target: DenseTarget, test_base: Dataset, p, pre, patch: int, ctx: RunContext, n_out: int) -> dict[str, float]:
    model.eval()

    def infer(x: torch.Tensor) -> torch.Tensor:
        if p.inference == "slide":
            return slide_inference(model.predict, x, p.window, p.stride, patch)
        return predict_padded(model.predict, x, patch)

    scores = []
    for rgb, truth in test_base:
        x = to_input(rgb, pre.mean, pre.std, ctx.device)
        with ctx.autocast():
            out = infer(x)
            if p.flip_tta:
                out = (out + infer(x.flip(-1)).flip(-1)) / 2
        if not torch.isfinite(out).all():  # an argmax over NaN would still give an mIoU
            raise FloatingPointError("non-finite predictions: the head diverged")
        scores.append(target.score(out.float().cpu(), torch.from_numpy(np.ascontiguousarray(truth)), p))
    return target.aggregate(scores, p, n_out)
