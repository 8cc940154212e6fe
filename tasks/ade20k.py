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
