"""Frozen feature extraction: one pass over a dataset under inference_mode (bf16 autocast on GPU)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from .contracts import Backbone, RunContext


def track(ctx: RunContext, iterable: Iterable, description: str, total: int | None = None):
    """Iterate with a progress bar when the run has one (the CLI), silently otherwise."""
    if ctx.progress is None:
        yield from iterable
        return
    task = ctx.progress.add_task(description, total=total)
    for item in iterable:
        yield item
        ctx.progress.advance(task)
    ctx.progress.remove_task(task)


@torch.inference_mode()
def extract(
    backbone: Backbone,
    dataset: Dataset,
    ctx: RunContext,
    reduce: Callable[[Backbone, torch.Tensor], torch.Tensor],
    description: str = "extracting features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reduce(backbone, images)`` for every image → (features N×…, labels N), on the CPU in fp32."""
    loader = DataLoader(dataset, batch_size=ctx.batch_size, shuffle=False, num_workers=ctx.num_workers)
    feats, labels = [], []
    backbone.eval()
    for images, targets in track(ctx, loader, description, total=len(loader)):
        with ctx.autocast():
            out = reduce(backbone, images.to(ctx.device, non_blocking=True))
        feats.append(out.float().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(feats), torch.cat(labels)
