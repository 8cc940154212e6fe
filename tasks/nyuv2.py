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


# ---------------------------------------------------------------------------------------
# The task: NYUv2 depth, Pixio and DINOv2 protocols
# ---------------------------------------------------------------------------------------
import torch  # noqa: E402

from evalsuite.contracts import TaskSpec  # noqa: E402
from evalsuite.metrics import DEPTH_KEYS, depth_metrics  # noqa: E402
from evalsuite.registry import TASKS  # noqa: E402

from .dense import COMMON_PARAMS, MINI_PARAMS, DenseTask  # noqa: E402

PERCENT = ("d1", "d2", "d3")  # reported in %, as in the papers

# v2: DPT's deepest fusion block lost its unused skip unit, which changes the head's initialisation
SPEC = TaskSpec(
    name="nyuv2", version=2, family="depth", primary_metric="d1", higher_is_better=True, tolerance=0.5,
    selection_split="none (last epoch)", report_split="test", dataset="nyuv2", mini_dataset="nyuv2-mini",
    params={**COMMON_PARAMS, "min_depth": 1e-3, "max_depth": 10.0, "silog_lambda": 0.5, "eigen_crop": True,
            "bins_blocks": 4, "layout": "auto", "rescale": ()},
    presets={"protocol": {
        "pixio": {},
        # DINOv2: 416×544 crops, 256-bin head on 4 blocks, whole-image inference with flip averaging.
        "dinov2": {"crop": (416, 544), "head": "bins", "inference": "whole", "flip_tta": True, "lr": 2e-4},
    }},
    mini_params=MINI_PARAMS,
    choices={"protocol": ("pixio", "dinov2"), "head": ("linear", "dpt", "bins"), "inference": ("slide", "whole"),
             "layout": ("auto", "sync", "labeled"), "selection": ("last",), "bins_blocks": (1, 4)},
    variant_keys=("protocol", "head"),
    quickstart=({"protocol": "pixio", "head": "linear"},),
    leaderboard_metrics=("rmse", "abs_rel"),
    description="NYUv2 monocular depth from a frozen backbone (Pixio DPT/linear or DINOv2 bins protocols)",
)


class NYUv2Task(DenseTask):
    spec = SPEC
    kind = "depth"
    higher_is_better = PERCENT

    def datasets(self, root, p):
        layout = p["layout"]
        if layout == "auto":
            layout = "sync" if (Path(root) / SYNC_LISTS["train"][1]).is_file() else "labeled"
        reader = NYUv2Sync if layout == "sync" else NYUv2Labeled
        return reader(root, "train"), reader(root, "test"), {"layout": layout, "report_split": "test"}

    def out_channels(self, root, p) -> int:
        return 1

    def score(self, out: torch.Tensor, target: torch.Tensor, p) -> dict | None:
        crop = p["eigen_crop"] and tuple(target.shape) == (480, 640)
        try:
            return depth_metrics(out[:, 0], target[None], min_depth=p["min_depth"], max_depth=p["max_depth"], eigen_crop=crop)
        except ValueError:  # fewer than 10 valid pixels: skipped, as the reference does
            return None

    def aggregate(self, results, p, num_outputs: int) -> dict[str, float]:
        kept = [r for r in results if r is not None]
        if not kept:
            raise ValueError("no test image has 10 valid depth pixels")
        return {k: sum(r[k] for r in kept) / len(kept) * (100 if k in PERCENT else 1) for k in DEPTH_KEYS}


TASKS.register("nyuv2", NYUv2Task)
