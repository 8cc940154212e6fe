"""NYU Depth v2: readers for the two layouts in use.

* ``labeled``: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5; ``images`` N×3×W×H uint8, ``depths``
  N×W×H metres, read through h5py and transposed to H×W) with the official ``splits.mat``
  (1-based ``trainNdxs``/``testNdxs``; 795/654 images in the real release).
* ``sync``: the BTS/ZoeDepth layout, a filenames list ``rgb depth focal`` per line, depth PNGs in
  millimetres (0 = invalid).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from evalsuite.data import DataNotFoundError

LABELED_MAT = "nyu_depth_v2_labeled.mat"
SPLITS_MAT = "splits.mat"
SYNC_LISTS = {"train": ("sync", "nyudepthv2_train_files_with_gt.txt"),
              "test": ("official_splits/test", "nyudepthv2_test_files_with_gt.txt")}


class NYUv2Labeled(Dataset):
    """(rgb H×W×3 uint8, depth H×W float32 metres) from the labeled .mat; ``split`` = train | test."""

    def __init__(self, root: str | Path, split: str = "test"):
        import h5py
        from scipy.io import loadmat

        root = Path(root)
        for name in (LABELED_MAT, SPLITS_MAT):
            if not (root / name).is_file():
                raise DataNotFoundError(f"NYUv2 labeled layout needs {root / name}")
        key = {"train": "trainNdxs", "test": "testNdxs"}[split]
        self.indices = loadmat(root / SPLITS_MAT)[key].ravel().astype(int) - 1  # MATLAB is 1-based
        self._file = h5py.File(root / LABELED_MAT, "r")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        j = self.indices[i]
        rgb = self._file["images"][j].transpose(2, 1, 0)
        depth = self._file["depths"][j].T.astype(np.float32)
        return np.ascontiguousarray(rgb), np.ascontiguousarray(depth)


class NYUv2Sync(Dataset):
    """(rgb, depth metres) from the BTS sync layout; the list's focal length is kept per sample."""

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        folder, list_name = SYNC_LISTS[split]
        listing = root / list_name
        if not listing.is_file():
            raise DataNotFoundError(f"NYUv2 sync layout needs the filenames list {listing}")
        self.base = root / folder
        self.samples = []
        for line in listing.read_text().splitlines():
            if line.strip():
                rgb, depth, focal = line.split()[:3]
                self.samples.append((rgb.lstrip("/"), depth.lstrip("/"), float(focal)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, depth, _ = self.samples[i]
        image = np.asarray(Image.open(self.base / rgb).convert("RGB"))
        millimetres = np.asarray(Image.open(self.base / depth), dtype=np.float32)
        return image, millimetres / 1000.0
