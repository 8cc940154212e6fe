"""Dataset-level statistics that `compare` and records recompute on resampled images: a metric that
is no mean of per-sample scores (segmentation mIoU: summed intersections over summed unions) is
stored as per-image sufficient statistics, and its bootstrap resamples images, not scores."""

from __future__ import annotations

from typing import Mapping

import torch

# ---------------------------------------------------------------------------------------
# Dataset-level statistics over resampled images (the segmentation mIoU bootstrap)
# ---------------------------------------------------------------------------------------
MIOU_STATISTIC = "segmentation-miou"


def segmentation_areas(samples: Mapping) -> torch.Tensor:
    """N×3×C per-image areas (intersection, union, labelled) from `SegmentationMeter.dataset_samples`."""
    if samples.get("statistic") != MIOU_STATISTIC:
        raise ValueError(f"not segmentation samples: statistic {samples.get('statistic')!r}")
    areas = torch.zeros(len(samples["images"]), 3, samples["num_classes"], dtype=torch.float64)
    rows = [(i, *entry) for i, image in enumerate(samples["images"]) for entry in image]
    if rows:
        table = torch.tensor(rows, dtype=torch.float64)
        image, cls = table[:, 0].long(), table[:, 1].long()
        areas[image, :, cls] = table[:, 2:]
    return areas


def dataset_statistic(samples: Mapping, weights: torch.Tensor | None = None) -> float | torch.Tensor:
    """The metric ``samples`` describe, on all images (``weights`` None) or on each resample (R×N)."""
    areas = segmentation_areas(samples)
    if weights is None:
        return miou_of_resamples(areas, torch.ones(1, len(areas)), samples["absent"], samples["scale"]).item()
    return miou_of_resamples(areas, weights, samples["absent"], samples["scale"])


def miou_of_resamples(areas: torch.Tensor, weights: torch.Tensor, absent: str, scale: float = 100.0) -> torch.Tensor:
    """The dataset-level mIoU of each resample: ``weights`` (R×N) counts how often each image is drawn;
    intersections and unions are summed over the drawn images, then IoU per class, then the mean as
    `segmentation_scores` takes it (never a mean of per-image IoUs)."""
    weights = weights.to(torch.float64)
    inter, union = weights @ areas[:, 0], weights @ areas[:, 1]
    if absent == "zero":
        return (inter / (union + 1e-6)).mean(dim=1) * scale
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.nan)
    return iou.nanmean(dim=1) * scale
