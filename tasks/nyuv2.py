"""NYU Depth v2 monocular depth on a frozen backbone: data → depth target → protocols.

Readers for the two layouts in use:

* ``labeled``: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5; ``images`` N×3×W×H uint8, ``depths``
  N×W×H metres, read through h5py and transposed to H×W) with the official ``splits.mat``
  (1-based ``trainNdxs``/``testNdxs``; 795/654 images in the real release).
* ``sync``: the BTS/ZoeDepth layout, a filenames list ``rgb depth focal`` per line, depth PNGs in
  millimetres (0 = invalid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from evalsuite.contracts import Task
from evalsuite.data import DataNotFoundError
from evalsuite.metrics import DEPTH_KEYS, depth_metrics
from evalsuite.params import param
from evalsuite.registry import HEADS, TASKS

from .dense import DENSE_HEAD_LR, DENSE_MINI, DenseParams, HeadSpec, run_dense

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


def open_splits(root, layout: str) -> tuple[Dataset, Dataset, str]:
    if layout == "auto":
        layout = "sync" if (Path(root) / SYNC_LISTS["train"][1]).is_file() else "labeled"
    reader = NYUv2Sync if layout == "sync" else NYUv2Labeled
    return reader(root, "train"), reader(root, "test"), layout


# ---------------------------------------------------------------------------------------
# Depth as a dense target
# ---------------------------------------------------------------------------------------
PERCENT = ("d1", "d2", "d3")  # reported in %, as in the papers


def silog_loss(pred: torch.Tensor, gt: torch.Tensor, min_depth: float, max_depth: float, lam: float = 0.5) -> torch.Tensor:
    """sqrt(mean d² − λ·mean(d)²), d = log pred − log gt over the batch's valid pixels (Pixio, λ = 0.5)."""
    valid = (gt > min_depth) & (gt < max_depth)
    d = torch.log(pred[valid].clamp_min(min_depth)) - torch.log(gt[valid])
    return ((d**2).mean() - lam * d.mean() ** 2).clamp_min(1e-12).sqrt()


class DepthTarget:
    pad_value = 0
    higher_is_better = PERCENT

    def datasets(self, root, p):
        train, test, layout = open_splits(root, p.layout)
        return train, test, {"layout": layout, "report_split": "test"}

    def out_channels(self, root, p) -> int:
        return 1

    def predict(self, head_out: torch.Tensor, head: HeadSpec, p) -> torch.Tensor:
        return head_out if head.outputs == "depth" else torch.sigmoid(head_out) * p.max_depth

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, p) -> torch.Tensor:
        return silog_loss(prediction[:, 0], target, p.min_depth, p.max_depth, p.silog_lambda)

    def as_target(self, target: torch.Tensor) -> torch.Tensor:
        return target.float()

    def score(self, out: torch.Tensor, target: torch.Tensor, p) -> dict | None:
        crop = p.eigen_crop and tuple(target.shape) == (480, 640)
        try:
            return depth_metrics(out[:, 0], target[None], min_depth=p.min_depth, max_depth=p.max_depth, eigen_crop=crop)
        except ValueError:  # fewer than 10 valid pixels: skipped, as the reference does
            return None

    def aggregate(self, results, p, num_outputs: int) -> dict[str, float]:
        kept = [r for r in results if r is not None]
        if not kept:
            raise ValueError("no test image has 10 valid depth pixels")
        return {k: sum(r[k] for r in kept) / len(kept) * (100 if k in PERCENT else 1) for k in DEPTH_KEYS}


DEPTH = DepthTarget()


# ---------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------
# v2: DPT's deepest fusion block lost its unused skip unit, which changes the head's initialisation
NYUV2 = Task("nyuv2", version=2, family="depth", dataset="nyuv2", mini_dataset="nyuv2-mini", tolerance=0.5,
             quickstart=({"protocol": "pixio", "head": "linear"},),
             description="NYUv2 monocular depth from a frozen backbone (Pixio DPT/linear or DINOv2 bins protocols)")


@dataclass(frozen=True)
class PixioDepth(DenseParams):
    head: str = param("dpt", "the head", choices=("linear", "dpt", "bins"))
    min_depth: float = param(1e-3, "valid ground truth is strictly above (metres)", min=0)
    max_depth: float = param(10.0, "valid ground truth is strictly below; sigmoid heads output up to it", min=0,
                             min_exclusive=True)
    silog_lambda: float = param(0.5, "λ of the SiLog training loss", min=0, max=1)
    eigen_crop: bool = param(True, "score inside the Eigen crop of 480×640 ground truth")
    layout: str = param("auto", "labeled .mat or BTS sync lists (auto: sync when its lists exist)",
                        choices=("auto", "sync", "labeled"))
    rescale: tuple[float, ...] = param((), "training rescale ratio range (lo, hi); empty: none", min=0)


@dataclass(frozen=True)
class DINOv2Depth(PixioDepth):
    """DINOv2: 416×544 crops, 256-bin head on 4 blocks, whole-image inference with flip averaging."""

    head: str = param("bins", "the head", choices=("linear", "dpt", "bins"))
    crop: tuple[int, int] = param((416, 544), "training crop (h, w)", min=1)
    inference: str = param("whole", "slide | whole", choices=("slide", "whole"))
    flip_tta: bool = param(True, "average with the prediction of the flipped image")


_DEPTH = dict(primary_metric="d1", higher_is_better=True, selection_split="none (last epoch)", report_split="test",
              mini=DENSE_MINI, components={"head": HEADS}, component_defaults={"head": DENSE_HEAD_LR},
              variant_keys=("head",), leaderboard_metrics=("rmse", "abs_rel"))


@NYUV2.protocol("pixio", PixioDepth, description="Pixio: crop 256, 60 epochs, AdamW, warm-up + poly, SiLog λ 0.5, slide 256/170",
                **_DEPTH)
def pixio_protocol(backbone, cfg, ctx):
    return run_dense(backbone, cfg, ctx, DEPTH)


@NYUV2.protocol("dinov2", DINOv2Depth, description="DINOv2: 416×544 crops, 256 bins, whole image + flip", **_DEPTH)
def dinov2_protocol(backbone, cfg, ctx):
    return run_dense(backbone, cfg, ctx, DEPTH)


TASKS.register("nyuv2", NYUV2)
