"""Dense metrics: NYUv2 depth (both reference conventions, the Eigen crop) and ADE20K segmentation
(mmseg's IoUMetric and Pixio's eval_semseg.py), each a named reference definition (docs/protocols.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evalsuite.metrics import MIOU_STATISTIC

EIGEN_CROP = (45, 471, 41, 601)  # rows 45:471, cols 41:601 of the 480×640 NYUv2 ground truth
DEPTH_KEYS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
MIN_VALID_PIXELS = 10


@dataclass(frozen=True)
class DepthConvention:
    """What differs between the depth evaluation codes: the valid range's bounds, whether predictions
    are clamped, and silog = scale·sqrt(mean(e²) − λ·mean(e)²) with e = ln pred − ln gt."""

    name: str
    inclusive_bounds: bool  # min ≤ gt ≤ max (Pixio) or min < gt < max (DINOv2's toolbox)
    clamp: bool  # predictions clamped to [min, max] before scoring
    silog_lambda: float
    silog_scale: float

    @property
    def silog_definition(self) -> str:
        scale = f"{self.silog_scale:g}·" if self.silog_scale != 1 else ""
        lam = "" if self.silog_lambda == 1 else f"{self.silog_lambda:g}·"
        return f"{scale}sqrt(mean(e²) − {lam}mean(e)²), e = ln pred − ln gt ({self.name})"


# Pixio `evaluation/monodepth/util/misc.py::eval_depth` and `eval_monodepth.py`: gt in [min, max], no clamp
PIXIO_DEPTH = DepthConvention("pixio", inclusive_bounds=True, clamp=False, silog_lambda=0.5, silog_scale=1.0)
# DINOv2/DINOv3 (Monocular-Depth-Estimation-Toolbox `metrics.py`, `dinov3/eval/depth/metrics.py`)
DINOV2_DEPTH = DepthConvention("dinov2", inclusive_bounds=False, clamp=True, silog_lambda=1.0, silog_scale=100.0)
DEPTH_CONVENTIONS = {c.name: c for c in (PIXIO_DEPTH, DINOV2_DEPTH)}


def eigen_crop_mask(height: int, width: int, device=None) -> torch.Tensor:
    if (height, width) != (480, 640):
        raise ValueError(f"the Eigen crop is defined on 480×640 ground truth, got {height}×{width}")
    top, bottom, left, right = EIGEN_CROP
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[top:bottom, left:right] = True
    return mask


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None, min_depth: float = 1e-3,
                  max_depth: float = 10.0, eigen_crop: bool = False,
                  convention: DepthConvention = DINOV2_DEPTH) -> dict[str, float]:
    """Monocular depth metrics on B×H×W tensors: computed per image, then averaged over images.

    Valid pixels: gt inside [min_depth, max_depth] (bounds per ``convention``), inside ``valid`` and
    the Eigen crop if asked; predictions are clamped to the range if the convention does. Images
    with fewer than 10 valid pixels are skipped (``n_images`` counts the kept ones; ``per_image``
    lists each kept image's values in order). δk = share of max(gt/pred, pred/gt) < 1.25^k; RMSE is
    the mean of per-image RMSEs, not a pooled RMSE; silog follows the convention.
    """
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must both be B×H×W, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if convention.inclusive_bounds:  # in gt's own dtype, as the references compare
        mask = (gt > 0) & (gt >= min_depth) & (gt <= max_depth)
    else:
        mask = (gt > min_depth) & (gt < max_depth)
    pred = pred.double()
    if convention.clamp:
        pred = pred.clamp(min_depth, max_depth)
    gt = gt.double()
    if valid is not None:
        mask &= valid.bool()
    if eigen_crop:
        mask &= eigen_crop_mask(*gt.shape[1:], device=gt.device)
    per_image = {k: [] for k in DEPTH_KEYS}
    for p, g, m in zip(pred, gt, mask):
        if m.sum() < MIN_VALID_PIXELS:
            continue
        p, g = p[m], g[m]
        ratio = torch.maximum(g / p, p / g)
        err = torch.log(p) - torch.log(g)
        values = {
            "d1": (ratio < 1.25).double().mean(), "d2": (ratio < 1.25**2).double().mean(),
            "d3": (ratio < 1.25**3).double().mean(), "abs_rel": ((g - p).abs() / g).mean(),
            "sq_rel": ((g - p) ** 2 / g).mean(), "rmse": ((g - p) ** 2).mean().sqrt(),
            "rmse_log": (err**2).mean().sqrt(), "log10": (torch.log10(p) - torch.log10(g)).abs().mean(),
            "silog": convention.silog_scale * ((err**2).mean() - convention.silog_lambda * err.mean() ** 2).clamp_min(0).sqrt(),
        }
        for k, v in values.items():
            per_image[k].append(v.item())
    n = len(per_image["d1"])
    if n == 0:
        raise ValueError("no image has at least 10 valid depth pixels")
    return {**{k: sum(v) / n for k, v in per_image.items()}, "n_images": n, "per_image": per_image}


class SegmentationMeter:
    """Dataset-level segmentation metrics.

    Intersections and unions are summed per class over all images, then IoU per class = I/U. mIoU
    follows ``absent``: ``"exclude"`` (mmseg's IoUMetric, the default) averages over classes whose
    union is non-zero; ``"zero"`` (Pixio's ``eval_semseg.py``: I / (U + 1e-6) over every class)
    counts a class absent from prediction and ground truth as 0. mAcc averages over classes present
    in the ground truth; aAcc = correct / labelled. Each image's per-class areas are kept (``areas``)
    so that the dataset-level mIoU can be bootstrapped over images.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, absent: str = "exclude"):
        if absent not in ("exclude", "zero"):
            raise ValueError(f"absent must be exclude or zero, got {absent!r}")
        self.num_classes, self.ignore_index, self.absent = num_classes, ignore_index, absent
        self.per_image: list[torch.Tensor] = []  # each 4×C: intersection, union, predicted area, labelled area

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != self.ignore_index
        pred, target = pred[keep].long(), target[keep].long()
        if target.numel() and (target.max() >= self.num_classes or target.min() < 0):
            raise ValueError(f"target labels outside 0..{self.num_classes - 1} (ignore {self.ignore_index})")
        if pred.numel() and (pred.max() >= self.num_classes or pred.min() < 0):
            raise ValueError(f"predicted labels outside 0..{self.num_classes - 1}")
        hit = pred[pred == target]
        bins = lambda x: torch.bincount(x, minlength=self.num_classes)[: self.num_classes].double().cpu()
        inter, area_p, area_t = bins(hit), bins(pred), bins(target)
        self.per_image.append(torch.stack([inter, area_p + area_t - inter, area_p, area_t]))

    @property
    def areas(self) -> torch.Tensor:
        """N×4×C: per image, the intersection, union, predicted and labelled area of every class."""
        return torch.stack(self.per_image) if self.per_image else torch.zeros(0, 4, self.num_classes, dtype=torch.float64)

    def compute(self) -> dict:
        return segmentation_scores(self.areas.sum(dim=0), self.absent)

    def dataset_samples(self, scale: float = 100.0) -> dict:
        """The per-image sufficient statistics of the dataset-level mIoU, for a bootstrap over images
        (`miou_of_resamples`): per image, [class, intersection, union, labelled area] of each class
        it touches (sparse: a few classes per image, ~0.5 MB for ADE20K's 2,000 validation images)."""
        images = [[[c, *(round(float(v)) for v in areas[[0, 1, 3], c])] for c in torch.nonzero(areas[1] > 0).flatten().tolist()]
                  for areas in self.per_image]
        return {"statistic": MIOU_STATISTIC, "absent": self.absent, "num_classes": self.num_classes, "scale": scale,
                "images": images}


def segmentation_scores(totals: torch.Tensor, absent: str = "exclude") -> dict:
    """mIoU, mAcc, aAcc from summed 4×C areas (intersection, union, predicted, labelled)."""
    intersection, union, _, label_area = totals
    present = union > 0
    if absent == "zero":
        iou = intersection / (union + 1e-6)
        miou = iou.mean().item()
    else:
        iou = intersection / union
        miou = iou[present].mean().item() if present.any() else float("nan")
    acc = intersection / label_area
    return {
        "mIoU": miou,
        "mAcc": acc[label_area > 0].mean().item() if (label_area > 0).any() else float("nan"),
        "aAcc": (intersection.sum() / label_area.sum()).item(),
        "per_class_iou": [float(v) if p else None for v, p in zip(iou.tolist(), present.tolist())],
    }
