"""Dense probing shared by NYUv2 depth and ADE20K segmentation: heads, pipelines, sliding windows.

The backbone is frozen (eval mode, forward under no_grad); only the head trains, on mmengine's
Runner. Heads read `Features` from the requested blocks; every patch map is concatenated with the
mean of the block's CLS tokens (Pixio's readout; CNNs have none).

Heads (`HEADS` registry): ``linear`` (BatchNorm + 1×1 conv on the last block), ``dpt``
(reassemble + fusion over 4 blocks), ``bins`` (DINOv2 lin.1/lin.4: 256 uniform depth bins),
``upernet`` (segmentation, MAE style; here on the frozen backbone — MAE's numbers fine-tune it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from evalsuite.contracts import Backbone, Features
from evalsuite.registry import HEADS
from evalsuite.sampling import seeded

IGNORE = 255


def with_cls(feats: Features, i: int) -> torch.Tensor:
    """Block i's patch map, concatenated with the mean of its CLS tokens when it has any."""
    patch, cls = feats.patch[i], feats.cls[i]
    if cls.shape[1] == 0:
        return patch
    return torch.cat([patch, cls.mean(dim=1)[..., None, None].expand(-1, -1, *patch.shape[-2:])], dim=1)


def readout_dim(backbone: Backbone, layer: int) -> int:
    with torch.no_grad():
        p = backbone.meta.patch_size
        probe = backbone.forward_features(torch.zeros(1, 3, 2 * p * 4, 2 * p * 4, device=_device(backbone)), layers=[layer])
    return with_cls(probe, 0).shape[1]


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# ---------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------
class LinearHead(nn.Module):
    """Pixio's linear probe: last block (⊕ mean CLS) → BatchNorm2d → 1×1 conv."""

    def __init__(self, in_dims: Sequence[int], out_channels: int, **_):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dims[-1])
        self.conv = nn.Conv2d(in_dims[-1], out_channels, 1)

    def forward(self, feats: Features) -> torch.Tensor:
        return self.conv(self.bn(with_cls(feats, -1)))


class BinsHead(nn.Module):
    """DINOv2's depth probe: the blocks (⊕ CLS) concatenated → BN → 1×1 conv to 256 bins, ×4 bilinear
    upsampling, softmax over bins, depth = Σ p·bin centre (uniform in [min_depth, max_depth])."""

    def __init__(self, in_dims: Sequence[int], out_channels: int = 1, bins: int = 256, min_depth: float = 1e-3,
                 max_depth: float = 10.0, **_):
        super().__init__()
        self.bn = nn.BatchNorm2d(sum(in_dims))
        self.conv = nn.Conv2d(sum(in_dims), bins, 1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, bins))
        self.outputs_depth = True

    def forward(self, feats: Features) -> torch.Tensor:
        x = torch.cat([with_cls(feats, i) for i in range(len(feats.patch))], dim=1)
        logits = F.interpolate(self.conv(self.bn(x)), scale_factor=4, mode="bilinear", align_corners=False)
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

    def __init__(self, in_dims: Sequence[int], out_channels: int, features: int = 256, patch_size: int = 16, **_):
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

    def forward(self, feats: Features) -> torch.Tensor:
        maps = [rn(rs(pj(with_cls(feats, i)))) for i, (pj, rs, rn) in enumerate(zip(self.project, self.resize, self.layer_rn))]
        x = self.fusion[3](maps[3])
        for i in (2, 1, 0):
            x = self.fusion[i](x, maps[i])
        # DPT's last ×2 brings patch-16 models to full resolution; go to grid × patch for any patch size
        h, w = feats.patch[0].shape[-2:]
        x = F.interpolate(self.head_in(x), size=(h * self.patch_size, w * self.patch_size), mode="bilinear", align_corners=True)
        return self.head_out(x)


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UperNetHead(nn.Module):
    """UperNet (Xiao et al. 2018) on a ViT, as MAE's segmentation: 4 blocks become a ×4/×2/×1/×½
    pyramid (transposed convs / max-pool), a pyramid-pooling module (scales 1, 2, 3, 6) on the
    coarsest level, a top-down FPN, and a fused 3×3 conv before the classifier."""

    def __init__(self, in_dims: Sequence[int], out_channels: int, features: int = 512, **_):
        super().__init__()
        if len(in_dims) != 4:
            raise ValueError(f"UperNet reads 4 blocks, got {len(in_dims)}")
        d = in_dims
        self.pyramid = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(d[0], d[0], 2, 2), nn.BatchNorm2d(d[0]), nn.GELU(), nn.ConvTranspose2d(d[0], d[0], 2, 2)),
            nn.ConvTranspose2d(d[1], d[1], 2, 2), nn.Identity(), nn.MaxPool2d(2, ceil_mode=True)])
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(d[3], features, 1)) for s in (1, 2, 3, 6))
        self.ppm_out = conv_bn_relu(d[3] + 4 * features, features, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(d[i], features, 1) for i in range(3))
        self.fpn = nn.ModuleList(conv_bn_relu(features, features, 3) for _ in range(3))
        self.fuse = conv_bn_relu(4 * features, features, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(features, out_channels, 1))

    def forward(self, feats: Features) -> torch.Tensor:
        levels = [up(with_cls(feats, i)) for i, up in enumerate(self.pyramid)]
        top = levels[3]
        pooled = [F.interpolate(m(top), size=top.shape[-2:], mode="bilinear", align_corners=False) for m in self.ppm]
        laterals = [lat(x) for lat, x in zip(self.lateral, levels[:3])] + [self.ppm_out(torch.cat([top, *pooled], 1))]
        for i in (2, 1, 0):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="bilinear", align_corners=False)
        outs = [self.fpn[i](laterals[i]) for i in range(3)] + [laterals[3]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]], 1))
        return self.classifier(fused)


HEADS.register("linear", LinearHead)
HEADS.register("upernet", UperNetHead)
HEADS.register("bins", BinsHead)
HEADS.register("dpt", DPTHead)


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
# Model and losses
# ---------------------------------------------------------------------------------------
def silog_loss(pred: torch.Tensor, gt: torch.Tensor, min_depth: float, max_depth: float, lam: float = 0.5) -> torch.Tensor:
    """sqrt(mean d² − λ·mean(d)²), d = log pred − log gt over the batch's valid pixels (Pixio, λ = 0.5)."""
    valid = (gt > min_depth) & (gt < max_depth)
    d = torch.log(pred[valid].clamp_min(min_depth)) - torch.log(gt[valid])
    return ((d**2).mean() - lam * d.mean() ** 2).clamp_min(1e-12).sqrt()


def dense_model(backbone: Backbone, head: nn.Module, layers: Sequence[int], kind: str, min_depth: float,
                max_depth: float, silog_lambda: float):
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
                feats = self.backbone.forward_features(images, layers=layers, norm=True)
            out = F.interpolate(self.head(feats), size=images.shape[-2:], mode="bilinear", align_corners=False)
            if kind == "depth" and not getattr(self.head, "outputs_depth", False):
                out = torch.sigmoid(out) * max_depth
            return out

        def forward(self, images, targets=None, mode: str = "tensor"):
            out = self.predict(images)
            if mode != "loss":
                return out
            if kind == "depth":
                return {"loss": silog_loss(out[:, 0], targets, min_depth, max_depth, silog_lambda)}
            return {"loss": F.cross_entropy(out, targets, ignore_index=IGNORE)}

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

    def __init__(self, base: Dataset, kind: str, crop: CropConfig, mean, std, seed: int):
        self.base, self.kind, self.crop, self.seed = base, kind, crop, seed
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
        fill = IGNORE if self.kind == "seg" else 0
        image = F.pad(image, (0, max(0, cw - W), 0, max(0, ch - H)))
        target = F.pad(target, (0, max(0, cw - W), 0, max(0, ch - H)), value=fill)
        H, W = image.shape[-2:]
        y = int(torch.randint(0, H - ch + 1, (1,), generator=gen))
        x = int(torch.randint(0, W - cw + 1, (1,), generator=gen))
        image, target = image[:, y : y + ch, x : x + cw], target[y : y + ch, x : x + cw]
        if self.crop.flip and torch.rand(1, generator=gen).item() < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        target = target.float() if self.kind == "depth" else target.long()
        return (image - self.mean) / self.std, target


def collate(batch):
    images, targets = zip(*batch)
    return {"images": torch.stack(images), "targets": torch.stack(targets)}


def to_input(rgb: np.ndarray, mean, std, device) -> torch.Tensor:
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    return ((image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None].to(device)


def iterations(epochs: int, n: int, batch_size: int) -> int:
    return max(2, epochs * math.ceil(n / batch_size))


# ---------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------
COMMON_PARAMS = {  # the Pixio protocol; task specs add their own and the presets of other protocols
    "protocol": "pixio", "head": "dpt", "crop": (256, 256), "epochs": 60, "batch_size": 16, "lr": 0.0,
    "weight_decay": 0.01, "warmup": 0.1, "inference": "slide", "window": 256, "stride": 170, "flip_tta": False,
    "dpt_features": 256, "checkpoint_interval": 0, "selection": "last",
}
# The mini world's protocol: tiny crops, non-overlapping windows and a higher learning rate, so a
# head learns something in the seconds the quickstart can spend (recorded in every mini record).
MINI_PARAMS = {"epochs": 10, "batch_size": 8, "crop": (128, 128), "window": 128, "stride": 128, "dpt_features": 64,
               "lr": 5e-3}
DEFAULT_LR = {"dpt": 1e-4}  # Pixio: AdamW 1e-4 for DPT, 2e-4 for the linear head (and bins)


class DenseTask:
    """Subclasses set ``spec``, ``kind`` and ``higher_is_better`` (metric names) and implement
    `datasets`, `out_channels`, `score` (one test image) and `aggregate` (all of them)."""

    kind: str

    def datasets(self, root, params) -> tuple[Dataset, Dataset, dict]:
        raise NotImplementedError

    def out_channels(self, root, params) -> int:
        raise NotImplementedError

    def layers(self, backbone: Backbone, params) -> tuple[int, ...]:
        depth = backbone.meta.depth
        if params["head"] in ("dpt", "upernet"):
            return tuple(backbone.meta.default_layers)
        if params["head"] == "bins":
            return tuple(range(depth - params["bins_blocks"], depth))
        return (depth - 1,)

    def run(self, backbone: Backbone, spec, ctx):
        import tempfile

        from evalsuite import engine
        from evalsuite.contracts import Metric, TaskOutput

        p = spec.params
        train_base, test_base, info = self.datasets(ctx.data_root, p)
        layers = self.layers(backbone, p)
        in_dims = [readout_dim(backbone, i) for i in layers]
        n_out = self.out_channels(ctx.data_root, p)
        lo, hi = p.get("min_depth", 1e-3), p.get("max_depth", 10.0)  # segmentation specs have no depth range
        head = HEADS.get(p["head"])(in_dims, n_out, features=p["dpt_features"], patch_size=backbone.meta.patch_size,
                                    min_depth=lo, max_depth=hi)
        model = dense_model(backbone, head, layers, self.kind, lo, hi, p.get("silog_lambda", 0.5)).to(ctx.device)
        pre = backbone.meta.preprocess
        trainset = DenseTrainSet(train_base, self.kind, CropConfig(tuple(p["crop"]), p.get("rescale") or None),
                                 pre.mean, pre.std, ctx.seed)
        iters = iterations(p["epochs"], len(trainset), p["batch_size"])
        work_dir = ctx.work_dir or tempfile.mkdtemp(prefix="evalsuite-")
        model = engine.train(model, trainset, collate=collate, batch_size=min(p["batch_size"], len(trainset)),
                             iters=iters, lr=p["lr"] or DEFAULT_LR.get(p["head"], 2e-4), weight_decay=p["weight_decay"],
                             warmup_iters=int(p["warmup"] * iters), work_dir=work_dir, seed=ctx.seed, resume=True,
                             checkpoint_interval=p["checkpoint_interval"], amp_dtype=ctx.amp_dtype)
        metrics = self.evaluate(model, test_base, p, pre, backbone.meta.patch_size, ctx, n_out)
        out = [Metric(name, value, info["report_split"], name in self.higher_is_better, primary=name == spec.primary_metric)
               for name, value in metrics.items()]
        return TaskOutput(out, {**info, "layers": list(layers), "iterations": iters, "selection": "last epoch"})

    @torch.inference_mode()
    def evaluate(self, model, test_base: Dataset, p, pre, patch: int, ctx, n_out: int) -> dict[str, float]:
        model.eval()

        def infer(x: torch.Tensor) -> torch.Tensor:
            if p["inference"] == "slide":
                return slide_inference(model.predict, x, p["window"], p["stride"], patch)
            return predict_padded(model.predict, x, patch)

        results = []
        for rgb, target in test_base:
            x = to_input(rgb, pre.mean, pre.std, ctx.device)
            with ctx.autocast():
                out = infer(x)
                if p["flip_tta"]:
                    out = (out + infer(x.flip(-1)).flip(-1)) / 2
            if not torch.isfinite(out).all():  # an argmax over NaN would still give an mIoU
                raise FloatingPointError("non-finite predictions: the head diverged")
            results.append(self.score(out.float().cpu(), torch.from_numpy(np.ascontiguousarray(target)), p))
        return self.aggregate(results, p, n_out)
