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
from torch.utils.data import Dataset

from evalsuite.contracts import Task
from evalsuite.data import DataNotFoundError, read_image, within
from evalsuite.params import ParamError, param
from evalsuite.registry import HEADS, TASKS
from tasks.dense.metrics import DEPTH_CONVENTIONS, DEPTH_KEYS, depth_metrics

from .dense.heads import HeadSpec
from .dense.protocol import DENSE_MINI, PIXIO_HEAD_LR, DenseParams, run_dense

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
                within(self.base, rgb.lstrip("/"), listing), within(self.base, depth.lstrip("/"), listing)
                self.samples.append((rgb.lstrip("/"), depth.lstrip("/"), float(focal)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, depth, _ = self.samples[i]
        image = np.asarray(read_image(self.base / rgb))
        millimetres = np.asarray(read_image(self.base / depth, mode=None), dtype=np.float32)
        return image, millimetres / 1000.0


def open_splits(root, layout: str) -> tuple[Dataset, Dataset, str]:
    if layout == "auto":
        layout = "sync" if (Path(root) / SYNC_LISTS["train"][1]).is_file() else "labeled"
    reader = NYUv2Sync if layout == "sync" else NYUv2Labeled
    return reader(root, "train"), reader(root, "test"), layout


# The crops the references apply to RGB and ground truth before anything else:
# Pixio's dataset (`monodepth/data/nyuv2.py`) crops both to the Eigen crop for training and testing;
# the depth toolbox's NYUCrop (DINOv2's training pipeline) keeps rows 45:472, cols 43:608.
INPUT_CROPS = {"none": None, "eigen": (45, 471, 41, 601), "nyu": (45, 472, 43, 608)}


class Cropped(Dataset):
    def __init__(self, base: Dataset, box: tuple[int, int, int, int] | None):
        self.base, self.box = base, box

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        rgb, depth = self.base[i]
        if self.box is None:
            return rgb, depth
        if rgb.shape[:2] != (480, 640):
            raise ValueError(f"the {self.box} crop is defined on 480×640 NYUv2 frames, got {rgb.shape[:2]}")
        top, bottom, left, right = self.box
        return np.ascontiguousarray(rgb[top:bottom, left:right]), np.ascontiguousarray(depth[top:bottom, left:right])


# ---------------------------------------------------------------------------------------
# Depth as a dense target
# ---------------------------------------------------------------------------------------
PERCENT = ("d1", "d2", "d3")  # reported in %, as in the papers
PER_SAMPLE = ("d1", "abs_rel", "rmse")  # per test image in the record, for paired intervals


def silog_loss(pred: torch.Tensor, gt: torch.Tensor, min_depth: float, max_depth: float, lam: float = 0.5) -> torch.Tensor:
    """Pixio's SiLogLoss: sqrt(mean d² − λ·mean(d)²), d = ln gt − ln pred over the batch's valid
    pixels (min ≤ gt ≤ max), predictions clamped below at min_depth (λ = 0.5)."""
    valid = (gt > 0) & (gt >= min_depth) & (gt <= max_depth)
    d = torch.log(gt[valid]) - torch.log(pred[valid].clamp_min(min_depth))
    return ((d**2).mean() - lam * d.mean() ** 2).clamp_min(1e-12).sqrt()


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, warm_up: bool = False, eps: float = 1e-3) -> torch.Tensor:
    """DINOv2's SigLoss (``eval/depth/models/losses/sigloss.py``): sqrt(var(g) + 0.15·mean(g)²),
    g = ln(pred + ε) − ln(gt + ε) over gt > 0 (the configs pass no max depth), ``torch.var``
    unbiased; during its warm-up (the first 100 iterations) only sqrt(0.15·mean(g)²)."""
    valid = gt > 0
    g = torch.log(pred[valid] + eps) - torch.log(gt[valid] + eps)
    if warm_up:
        return (0.15 * g.mean() ** 2).sqrt()
    return (g.var() + 0.15 * g.mean() ** 2).sqrt()


def current_iteration() -> int:
    from mmengine.logging import MessageHub

    return int(MessageHub.get_current_instance().get_info("iter", 0))


class DepthTarget:
    pad_value = 0
    higher_is_better = PERCENT

    def datasets(self, root, p):
        train, test, layout = open_splits(root, p.layout)
        info = {"layout": layout, "report_split": "test", "train_crop": p.train_crop, "test_crop": p.test_crop}
        return Cropped(train, INPUT_CROPS[p.train_crop]), Cropped(test, INPUT_CROPS[p.test_crop]), info

    def out_channels(self, root, p) -> int:
        return 1

    def predict(self, head_out: torch.Tensor, head: HeadSpec, p) -> torch.Tensor:
        return head_out if head.outputs == "depth" else torch.sigmoid(head_out) * p.max_depth

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, p) -> torch.Tensor:
        """The loss of each group of ``loss_group`` samples (the reference's per-GPU batch: both losses
        are statistics of it), averaged as DDP averages the GPUs' gradients."""
        n = max(1, prediction.shape[0] // p.loss_group)  # strided, as DDP deals a global batch to the processes
        pairs = [(prediction[g::n, 0], target[g::n]) for g in range(n)]
        if p.loss == "sig":
            warm = current_iteration() < 100
            losses = [sig_loss(pred, gt, warm) for pred, gt in pairs]
        else:
            losses = [silog_loss(pred, gt, p.min_depth, p.max_depth, p.silog_lambda) for pred, gt in pairs]
        return torch.stack(losses).mean()

    def as_target(self, target: torch.Tensor) -> torch.Tensor:
        return target.float()

    def merge(self, p) -> str:
        return "mean"

    def infer(self, infer, x: torch.Tensor, p) -> torch.Tensor:
        return infer(x)

    def score(self, out: torch.Tensor, target: torch.Tensor, p) -> dict | None:
        crop = p.eigen_crop and tuple(target.shape) == (480, 640)
        try:
            return depth_metrics(out[:, 0], target[None], min_depth=p.min_depth, max_depth=p.max_depth, eigen_crop=crop,
                                 convention=DEPTH_CONVENTIONS[p.convention])
        except ValueError:  # fewer than 10 valid pixels: skipped, as the reference does
            return None

    def aggregate(self, results, p, num_outputs: int):
        kept = [r for r in results if r is not None]
        if not kept:
            raise ValueError("no test image has 10 valid depth pixels")
        scale = {k: 100 if k in PERCENT else 1 for k in DEPTH_KEYS}
        metrics = {k: sum(r[k] for r in kept) / len(kept) * scale[k] for k in DEPTH_KEYS}
        per_sample = {k: [r["per_image"][k][0] * scale[k] for r in kept] for k in PER_SAMPLE}
        return metrics, per_sample

    def definition(self, name: str, p) -> str | None:
        return DEPTH_CONVENTIONS[p.convention].silog_definition if name == "silog" else None


DEPTH = DepthTarget()


# ---------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------
# v3: Pixio's protocol crops the input to the Eigen crop, places windows as Pixio does, uses Pixio's
# DPT head, silog definitions and valid range, global batch 32 and align_corners=True; the dinov2
# protocol is DINOv2's depther and training config (docs/protocols.md)
NYUV2 = Task("nyuv2", version=3, family="depth", dataset="nyuv2", mini_dataset="nyuv2-mini", tolerance=0.5,
             quickstart=({"protocol": "pixio", "head": "linear"},),
             description="NYUv2 monocular depth from a frozen backbone (Pixio DPT/linear or DINOv2 bins protocols)")


@dataclass(frozen=True)
class PixioDepth(DenseParams):
    """Pixio's `evaluation/monodepth` (configs/nyuv2_*.yaml, eval_monodepth.py)."""

    head: str = param("dpt", "the head", choices=("linear", "dpt", "bins"))
    batch_size: int = param(32, "global training batch (Pixio: 4 per GPU × 8)", min=1)
    warmup: float = param(0.1, "share of iterations with linear warm-up", min=0, max=1, max_exclusive=True)
    min_depth: float = param(1e-3, "lower end of the valid ground-truth range (metres)", min=0)
    max_depth: float = param(10.0, "upper end of the valid range; sigmoid heads output up to it", min=0, min_exclusive=True)
    loss: str = param("silog", "silog: Pixio's SiLog (λ below); sig: the depth toolbox's SigLoss (DINOv2)",
                      choices=("silog", "sig"))
    silog_lambda: float = param(0.5, "λ of the SiLog training loss", min=0, max=1)
    loss_group: int = param(4, "samples per loss statistic: the reference's per-GPU batch (Pixio: 4)", min=1)
    train_crop: str = param("eigen", "crop of RGB and ground truth before training: eigen 45:471×41:601 | nyu "
                                      "45:472×43:608 | none", choices=tuple(INPUT_CROPS))
    test_crop: str = param("eigen", "crop of RGB and ground truth before inference", choices=("eigen", "none"))
    eigen_crop: bool = param(True, "score only the Eigen crop when the test ground truth is the full 480×640 frame")
    convention: str = param("pixio", "valid range bounds, clamping and silog of the metrics (docs/protocols.md)",
                            choices=tuple(DEPTH_CONVENTIONS))
    layout: str = param("auto", "labeled .mat or BTS sync lists (auto: sync when its lists exist)",
                        choices=("auto", "sync", "labeled"))

    def check(self) -> None:
        super().check()
        if self.batch_size % self.loss_group:
            raise ParamError(f"batch_size={self.batch_size} is not a multiple of loss_group={self.loss_group}")


@dataclass(frozen=True)
class DINOv2Depth(PixioDepth):
    """DINOv2's depther (``dinov2/hub/depthers.py``) with the depth toolbox's NYU config: 256-bin head
    on DINOv2's blocks, 416×544 crops, 38.4k iterations, whole image + flip, DINOv2's metrics."""

    head: str = param("bins", "the head", choices=("linear", "dpt", "bins"))
    crop: tuple[int, int] = param((416, 544), "training crop (h, w)", min=1)
    epochs: int | None = param(None, "training epochs (none: use iterations)", min=1)
    iterations: int | None = param(38400, "training iterations", min=1)
    batch_size: int = param(16, "global training batch (2 per GPU; DINOv3's NYU config: × 8 GPUs)", min=1)
    lr: float = param(1e-4, "AdamW learning rate", min=0, min_exclusive=True)
    schedule: str = param("mmcv-cosine", "mmcv's cosine hook (to 1e-8 of the lr) under a linear warm-up",
                          choices=("poly", "mmcv-poly", "mmcv-cosine"))
    warmup: float = param(1 / 3, "share of iterations with linear warm-up (12,800 of 38,400)", min=0, max=1,
                          max_exclusive=True)
    warmup_ratio: float = param(1e-3, "warm-up starts at this fraction of the lr", min=0, max=1)
    beta1_cycle: bool = param(True, "mmcv's OneCycle momentum on AdamW's β1 (the config's momentum_config)")
    grad_clip: float | None = param(35.0, "gradient-norm clipping", min=0, min_exclusive=True)
    rotate: float = param(2.5, "random rotation ±degrees with probability ½", min=0)
    colour_augment: bool = param(True, "the depth toolbox's ColorAug with probability ½")
    loss: str = param("sig", "silog | sig (the GradientLoss of the config adds 0 at 2 samples per GPU)",
                      choices=("silog", "sig"))
    loss_group: int = param(2, "samples per loss statistic: the config's 2 per GPU", min=1)
    train_crop: str = param("nyu", "crop before training (the toolbox's NYUCrop)", choices=tuple(INPUT_CROPS))
    test_crop: str = param("none", "crop before inference", choices=("eigen", "none"))
    align_corners: bool = param(False, "bilinear upsampling of the head's output")
    padding: str = param("centre", "DINOv2's CenterPadding, prediction resized onto the image", choices=("right", "centre"))
    inference: str = param("whole", "slide | whole", choices=("slide", "whole"))
    flip_tta: bool = param(True, "average with the prediction of the flipped image")
    convention: str = param("dinov2", "valid range bounds, clamping and silog of the metrics",
                            choices=tuple(DEPTH_CONVENTIONS))


_DEPTH = dict(primary_metric="d1", higher_is_better=True, selection_split="none (last iteration)", report_split="test",
              components={"head": HEADS}, variant_keys=("head",), leaderboard_metrics=("rmse", "abs_rel"))
DINOV2_MINI = {"iterations": 60, "batch_size": 8, "crop": (128, 160), "lr": 5e-3, "features": 64, "widths": (64, 128, 256, 256)}


@NYUV2.protocol("pixio", PixioDepth, mini=DENSE_MINI, component_defaults={"head": PIXIO_HEAD_LR},
                description="Pixio: Eigen-cropped input, crop 256, 60 epochs, AdamW, warm-up + poly, SiLog λ 0.5, "
                            "slide 256/170", **_DEPTH)
def pixio_protocol(backbone, cfg, ctx):
    return run_dense(backbone, cfg, ctx, DEPTH)


@NYUV2.protocol("dinov2", DINOv2Depth, mini=DINOV2_MINI,
                description="DINOv2: 416×544 crops, 256 bins on raw blocks ⊕ CLS, 38.4k iterations, whole image + flip",
                **_DEPTH)
def dinov2_protocol(backbone, cfg, ctx):
    return run_dense(backbone, cfg, ctx, DEPTH)


TASKS.register("nyuv2", NYUV2)
