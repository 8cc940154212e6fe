"""ADE20K semantic segmentation on a frozen backbone: data → segmentation target → protocols.

The reader (ADEChallengeData2016) applies mmseg's ``reduce_zero_label``: 0 ("other") → 255, k → k − 1.
mIoU is dataset-level (intersections and unions summed over all images, mmseg's IoUMetric).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from evalsuite.contracts import Task
from evalsuite.data import DataNotFoundError, read_image
from evalsuite.params import param
from evalsuite.registry import HEADS, TASKS
from tasks.dense.metrics import SegmentationMeter

from .dense.heads import HeadSpec
from .dense.protocol import DENSE_MINI, PIXIO_HEAD_LR, DenseParams, run_dense

IGNORE_INDEX = 255


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    out = label.astype(np.int64) - 1
    out[label == 0] = IGNORE_INDEX
    return out.astype(np.uint8)


class ADE20K(Dataset):
    """(rgb H×W×3 uint8, label H×W uint8 with 255 = ignore); ``split`` = training | validation."""

    def __init__(self, root: str | Path, split: str = "validation", reduce_zero: bool = True, num_classes: int | None = None):
        root = Path(root)
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        images, labels = base / "images" / split, base / "annotations" / split
        if not images.is_dir() or not labels.is_dir():
            raise DataNotFoundError(f"ADE20K {split} not found: expected {images} and {labels}")
        self.images = sorted(images.glob("*.jpg"))
        self.labels = [labels / f"{p.stem}.png" for p in self.images]
        missing = [p.name for p in self.labels if not p.is_file()]
        if missing:
            raise DataNotFoundError(f"ADE20K {split}: {len(missing)} annotations missing in {labels}, e.g. {missing[0]}")
        self.reduce_zero, self.num_classes = reduce_zero, num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.asarray(read_image(self.images[i]))
        label = np.asarray(read_image(self.labels[i], mode=None))
        label = reduce_zero_label(label) if self.reduce_zero else label
        if self.num_classes is not None:
            labelled = label[label != IGNORE_INDEX]
            if labelled.size and labelled.max() >= self.num_classes:
                raise ValueError(f"{self.labels[i]}: label {int(labelled.max()) + self.reduce_zero} is beyond the "
                                 f"{self.num_classes} classes (0 = other, 1..{self.num_classes}; 255 ignored)")
        return rgb, label


# ---------------------------------------------------------------------------------------
# Segmentation as a dense target
# ---------------------------------------------------------------------------------------
ADE_NUM_CLASSES = 150
MIOU_DEFINITIONS = {"zero": "mean over all classes of I/(U + 1e-6), dataset-level (Pixio)",
                    "exclude": "mean over classes with U > 0 of I/U, dataset-level (mmseg IoUMetric)"}


class SegmentationTarget:
    pad_value = IGNORE_INDEX
    higher_is_better = ("mIoU", "mAcc", "aAcc")

    def datasets(self, root, p):
        n = self.out_channels(root, p)
        return ADE20K(root, "training", num_classes=n), ADE20K(root, "validation", num_classes=n), {"report_split": "validation"}

    def out_channels(self, root, p) -> int:
        meta = Path(root) / "ADEChallengeData2016" / "classes.json"
        return json.loads(meta.read_text())["num_classes"] if meta.is_file() else ADE_NUM_CLASSES

    def predict(self, head_out: torch.Tensor, head: HeadSpec, p) -> torch.Tensor:
        return head_out

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, p) -> torch.Tensor:
        return F.cross_entropy(prediction, target, ignore_index=IGNORE_INDEX)

    def as_target(self, target: torch.Tensor) -> torch.Tensor:
        return target.long()

    def merge(self, p) -> str:
        return p.merge

    def infer(self, infer, x: torch.Tensor, p) -> torch.Tensor:
        """With ``test_short_side`` (mmseg's test Resize, keep ratio): infer on the resized image and
        resize the logits back to the image (bilinear, align_corners=False), as mmseg scores."""
        if p.test_short_side is None:
            return infer(x)
        H, W = x.shape[-2:]
        factor = p.test_short_side / min(H, W)
        resized = F.interpolate(x, size=(int(H * factor + 0.5), int(W * factor + 0.5)), mode="bilinear", align_corners=False)
        return F.interpolate(infer(resized), size=(H, W), mode="bilinear", align_corners=False)

    def score(self, out: torch.Tensor, target: torch.Tensor, p):
        return out.argmax(dim=1)[0], target

    def aggregate(self, results, p, num_classes: int):
        meter = SegmentationMeter(num_classes, IGNORE_INDEX, absent=p.miou_absent)
        for pred, target in results:
            meter.update(pred, target)
        out = meter.compute()
        return {k: 100 * out[k] for k in ("mIoU", "mAcc", "aAcc")}, {"mIoU": meter.dataset_samples(scale=100.0)}

    def definition(self, name: str, p) -> str | None:
        return MIOU_DEFINITIONS[p.miou_absent] if name == "mIoU" else None


SEGMENTATION = SegmentationTarget()


# ---------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------
# v3: Pixio's protocol rescales as Pixio does (long side × [0.5, 2], PIL bicubic), sums window softmax
# probabilities, places windows as Pixio, has no warm-up, uses Pixio's DPT head and align_corners=True;
# the dinov2 protocol is DINOv2's ADE20K linear config (docs/protocols.md)
ADE20K_TASK = Task("ade20k", version=3, family="segmentation", dataset="ade20k", mini_dataset="ade20k-mini",
                   tolerance=0.5, quickstart=({"protocol": "pixio", "head": "linear"},),
                   description="ADE20K semantic segmentation (dataset-level mIoU) from a frozen backbone")


@dataclass(frozen=True)
class PixioSegmentation(DenseParams):
    """Pixio's `evaluation/semseg` (configs/ade20k_*.yaml, eval_semseg.py)."""

    head: str = param("dpt", "the head", choices=("linear", "dpt", "upernet"))
    rescale_rule: str = param("long-side", "training rescale: none | long-side | short-side",
                              choices=("none", "long-side", "short-side"))
    merge: str = param("softmax-sum", "window merge: softmax-sum (Pixio) | mean of logits (mmseg)",
                       choices=("softmax-sum", "mean"))
    test_short_side: int | None = param(None, "resize test images to this short side (none: full size)", min=1)
    miou_absent: str = param("zero", "mIoU over all classes, absent ones 0 (Pixio) | over present ones (mmseg)",
                             choices=tuple(MIOU_DEFINITIONS))


@dataclass(frozen=True)
class DINOv2Segmentation(PixioSegmentation):
    """DINOv2's ``*_ade20k_linear_config.py``: BNHead on the last block's normed patch tokens, 512
    crops, 40k iterations at batch 16, slide 512/341 on short-side-512 images."""

    head: str = param("linear", "the head", choices=("linear", "dpt", "upernet"))
    crop: tuple[int, int] = param((512, 512), "training crop (h, w)", min=1)
    epochs: int | None = param(None, "training epochs (none: use iterations)", min=1)
    iterations: int | None = param(40000, "training iterations", min=1)
    lr: float = param(1e-3, "AdamW learning rate", min=0, min_exclusive=True)
    weight_decay: float = param(1e-4, "AdamW weight decay", min=0)
    schedule: str = param("mmcv-poly", "mmcv's poly hook under a linear warm-up", choices=("poly", "mmcv-poly", "mmcv-cosine"))
    poly_power: float = param(1.0, "power of the poly schedule", min=0, min_exclusive=True)
    warmup: float = param(1500 / 40000, "share of iterations with linear warm-up (1,500 of 40,000)", min=0, max=1,
                          max_exclusive=True)
    warmup_ratio: float = param(1e-6, "warm-up starts at this fraction of the lr", min=0, max=1)
    rescale_rule: str = param("short-side", "training rescale", choices=("none", "long-side", "short-side"))
    cat_max_ratio: float | None = param(0.75, "retry crops where one class covers more than this share", min=0, max=1,
                                        min_exclusive=True)
    photometric: bool = param(True, "mmseg's PhotoMetricDistortion")
    train_pad: str = param("mean", "pad after normalisation (mmseg's Pad)", choices=("black", "mean"))
    align_corners: bool = param(False, "bilinear upsampling of the head's output")
    padding: str = param("centre", "DINOv2's CenterPadding, prediction resized onto the window", choices=("right", "centre"))
    window: int = param(512, "sliding-window size", min=1)
    stride: int = param(341, "sliding-window stride", min=1)
    placement: str = param("flush", "mmseg's windows, the last flush with the end", choices=("pixio", "flush"))
    merge: str = param("mean", "window merge", choices=("softmax-sum", "mean"))
    test_short_side: int | None = param(512, "resize test images to this short side (mmseg's test Resize)", min=1)
    miou_absent: str = param("exclude", "mIoU over present classes (mmseg)", choices=tuple(MIOU_DEFINITIONS))


_SEG = dict(primary_metric="mIoU", higher_is_better=True, selection_split="none (last iteration)", report_split="validation",
            components={"head": HEADS}, variant_keys=("head",), leaderboard_metrics=("aAcc",))
DINOV2_MINI = {"iterations": 60, "batch_size": 8, "crop": (128, 128), "window": 128, "stride": 85, "lr": 5e-3,
               "test_short_side": 128, "features": 64, "widths": (64, 128, 256, 256)}


@ADE20K_TASK.protocol("pixio", PixioSegmentation, mini=DENSE_MINI, component_defaults={"head": PIXIO_HEAD_LR},
                      description="Pixio: long side ×0.5–2, crop 256, 60 epochs, no warm-up, slide 256/170 summing "
                                  "softmax", **_SEG)
def pixio_protocol(backbone, cfg, ctx):
    return run_dense(backbone, cfg, ctx, SEGMENTATION)


@ADE20K_TASK.protocol("dinov2", DINOv2Segmentation, mini=DINOV2_MINI,
                      component_defaults={"head": {"linear": {"cls": "none"}}},
                      description="DINOv2: BNHead on normed patch tokens, 512 crops, 40k iterations, slide 512/341",
                      **_SEG)
def dinov2_protocol(backbone, cfg, ctx):
    return run_dense(backbone, cfg, ctx, SEGMENTATION)


TASKS.register("ade20k", ADE20K_TASK)
