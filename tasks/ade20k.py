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
from PIL import Image
from torch.utils.data import Dataset

from evalsuite.contracts import Task
from evalsuite.data import DataNotFoundError
from evalsuite.metrics import SegmentationMeter
from evalsuite.params import param
from evalsuite.registry import HEADS, TASKS

from .dense import DENSE_HEAD_LR, DENSE_MINI, DenseParams, HeadSpec, run_dense

IGNORE_INDEX = 255


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    out = label.astype(np.int64) - 1
    out[label == 0] = IGNORE_INDEX
    return out.astype(np.uint8)


class ADE20K(Dataset):
    """(rgb H×W×3 uint8, label H×W uint8 with 255 = ignore); ``split`` = training | validation."""

    def __init__(self, root: str | Path, split: str = "validation", reduce_zero: bool = True):
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
        self.reduce_zero = reduce_zero

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.asarray(Image.open(self.images[i]).convert("RGB"))
        label = np.asarray(Image.open(self.labels[i]))
        return rgb, reduce_zero_label(label) if self.reduce_zero else label


# ---------------------------------------------------------------------------------------
# Segmentation as a dense target
# ---------------------------------------------------------------------------------------
ADE_NUM_CLASSES = 150


class SegmentationTarget:
    pad_value = IGNORE_INDEX
    higher_is_better = ("mIoU", "mAcc", "aAcc")

    def datasets(self, root, p):
        return ADE20K(root, "training"), ADE20K(root, "validation"), {"report_split": "validation"}

    def out_channels(self, root, p) -> int:
        meta = Path(root) / "ADEChallengeData2016" / "classes.json"
        return json.loads(meta.read_text())["num_classes"] if meta.is_file() else ADE_NUM_CLASSES

    def predict(self, head_out: torch.Tensor, head: HeadSpec, p) -> torch.Tensor:
        return head_out

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, p) -> torch.Tensor:
        return F.cross_entropy(prediction, target, ignore_index=IGNORE_INDEX)

    def as_target(self, target: torch.Tensor) -> torch.Tensor:
        return target.long()

    def score(self, out: torch.Tensor, target: torch.Tensor, p):
        return out.argmax(dim=1)[0], target

    def aggregate(self, results, p, num_classes: int) -> dict[str, float]:
        meter = SegmentationMeter(num_classes, IGNORE_INDEX)
        for pred, target in results:
            meter.update(pred, target)
        out = meter.compute()
        return {k: 100 * out[k] for k in ("mIoU", "mAcc", "aAcc")}


SEGMENTATION = SegmentationTarget()


# ---------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------
# v2: DPT's deepest fusion block lost its unused skip unit, which changes the head's initialisation
ADE20K_TASK = Task("ade20k", version=2, family="segmentation", dataset="ade20k", mini_dataset="ade20k-mini",
                   tolerance=0.5, quickstart=({"protocol": "pixio", "head": "linear"},),
                   description="ADE20K semantic segmentation (dataset-level mIoU) from a frozen backbone")


@dataclass(frozen=True)
class PixioSegmentation(DenseParams):
    head: str = param("dpt", "the head", choices=("linear", "dpt", "upernet"))
    rescale: tuple[float, ...] = param((0.5, 2.0), "training rescale ratio range (lo, hi); empty: none", min=0)


@dataclass(frozen=True)
class DINOv2Segmentation(PixioSegmentation):
    """DINOv2: linear on the last block, 512 crops, 40k iterations at batch 16 ≈ 32 epochs, slide 512/341."""

    head: str = param("linear", "the head", choices=("linear", "dpt", "upernet"))
    crop: tuple[int, int] = param((512, 512), "training crop (h, w)", min=1)
    epochs: int = param(32, "training epochs", min=1)
    window: int = param(512, "sliding-window size", min=1)
    stride: int = param(341, "sliding-window stride", min=1)


_SEG = dict(primary_metric="mIoU", higher_is_better=True, selection_split="none (last epoch)", report_split="validation",
            mini=DENSE_MINI, components={"head": HEADS}, component_defaults={"head": DENSE_HEAD_LR},
            variant_keys=("head",), leaderboard_metrics=("aAcc",))


@ADE20K_TASK.protocol("pixio", PixioSegmentation, description="Pixio: crop 256, rescale ×0.5–2, 60 epochs, slide 256/170",
                      **_SEG)
def pixio_protocol(backbone, cfg, ctx):
    return run_dense(backbone, cfg, ctx, SEGMENTATION)


@ADE20K_TASK.protocol("dinov2", DINOv2Segmentation, description="DINOv2: linear, 512 crops, slide 512/341", **_SEG)
def dinov2_protocol(backbone, cfg, ctx):
    return run_dense(backbone, cfg, ctx, SEGMENTATION)


TASKS.register("ade20k", ADE20K_TASK)
