"""What depth and segmentation each define for the shared dense protocol."""

from __future__ import annotations

from typing import Protocol

import torch
from torch.utils.data import Dataset

from .heads import HeadSpec


# ---------------------------------------------------------------------------------------
# What depth and segmentation each define
# ---------------------------------------------------------------------------------------
class DenseTarget(Protocol):
    """The task-specific half of a dense protocol (depth: `tasks.nyuv2`, segmentation: `tasks.ade20k`)."""

    pad_value: int  # fill of target pixels added by padding
    higher_is_better: tuple[str, ...]

    def datasets(self, root, params) -> tuple[Dataset, Dataset, dict]: ...
    def out_channels(self, root, params) -> int: ...
    def predict(self, head_out: torch.Tensor, head: HeadSpec, params) -> torch.Tensor: ...
    def loss(self, prediction: torch.Tensor, target: torch.Tensor, params) -> torch.Tensor: ...
    def as_target(self, target: torch.Tensor) -> torch.Tensor: ...
    def score(self, prediction: torch.Tensor, target: torch.Tensor, params): ...
    def aggregate(self, scores: list, params, n_out: int) -> tuple[dict[str, float], dict[str, list[float]]]: ...
