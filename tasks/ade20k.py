"""ADE20K (ADEChallengeData2016) reader with mmseg's ``reduce_zero_label``: 0 ("other") → 255, k → k − 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from evalsuite.data import DataNotFoundError

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
# The task: ADE20K semantic segmentation, Pixio and DINOv2 protocols
# ---------------------------------------------------------------------------------------
import json  # noqa: E402

import torch  # noqa: E402

from evalsuite.contracts import TaskSpec  # noqa: E402
from evalsuite.metrics import SegmentationMeter  # noqa: E402
from evalsuite.registry import TASKS  # noqa: E402

from .dense import COMMON_PARAMS, MINI_PARAMS, DenseTask  # noqa: E402

ADE_NUM_CLASSES = 150

# v2: DPT's deepest fusion block lost its unused skip unit, which changes the head's initialisation
SPEC = TaskSpec(
    name="ade20k", version=2, family="segmentation", primary_metric="mIoU", higher_is_better=True, tolerance=0.5,
    selection_split="none (last epoch)", report_split="validation", dataset="ade20k", mini_dataset="ade20k-mini",
    params={**COMMON_PARAMS, "rescale": (0.5, 2.0)},
    presets={"protocol": {
        "pixio": {},
        # DINOv2: linear on the last block, 512 crops, 40k iterations at batch 16 ≈ 32 epochs, slide 512/341.
        "dinov2": {"head": "linear", "crop": (512, 512), "window": 512, "stride": 341, "epochs": 32},
    }},
    mini_params=MINI_PARAMS,
    choices={"protocol": ("pixio", "dinov2"), "head": ("linear", "dpt", "upernet"), "inference": ("slide", "whole"),
             "selection": ("last",)},
    variant_keys=("protocol", "head"),
    quickstart=({"protocol": "pixio", "head": "linear"},),
    leaderboard_metrics=("aAcc",),
    description="ADE20K semantic segmentation (dataset-level mIoU) from a frozen backbone",
)


class ADE20KTask(DenseTask):
    spec = SPEC
    kind = "seg"
    higher_is_better = ("mIoU", "mAcc", "aAcc")

    def datasets(self, root, p):
        return ADE20K(root, "training"), ADE20K(root, "validation"), {"report_split": "validation"}

    def out_channels(self, root, p) -> int:
        meta = Path(root) / "ADEChallengeData2016" / "classes.json"
        return json.loads(meta.read_text())["num_classes"] if meta.is_file() else ADE_NUM_CLASSES

    def score(self, out: torch.Tensor, target: torch.Tensor, p):
        return out.argmax(dim=1)[0], target

    def aggregate(self, results, p, num_classes: int) -> dict[str, float]:
        meter = SegmentationMeter(num_classes, IGNORE_INDEX)
        for pred, target in results:
            meter.update(pred, target)
        out = meter.compute()
        return {k: 100 * out[k] for k in ("mIoU", "mAcc", "aAcc")}


TASKS.register("ade20k", ADE20KTask)
