"""Progress reporting for long steps (feature extraction, training)."""

from __future__ import annotations

from typing import Iterable

from .contracts import RunContext


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
