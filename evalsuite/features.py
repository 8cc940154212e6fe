"""Progress reporting for long steps (generation, extraction, training, rollouts, pretraining).

On a terminal a step is a rich progress bar; off one (pipes, CI logs, Slurm) `LineProgress` prints
one line per step when it ends — its description (training puts its loss there), count and time —
plus a line a minute while a long step runs, so a log never sits silent for minutes. The CLI makes
its progress the current one (`reporting`); code without a `RunContext` (mini-world generation)
reports through `stage`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from .contracts import RunContext

_CURRENT: ContextVar[Any] = ContextVar("evalsuite_progress", default=None)


@contextmanager
def reporting(progress) -> Iterator[Any]:
    """Enter ``progress`` (a rich Progress or a `LineProgress`) and make it the current one."""
    token = _CURRENT.set(progress)
    try:
        with progress:
            yield progress
    finally:
        _CURRENT.reset(token)


@contextmanager
def stage(description: str, total: int | None = None, progress: Any = None) -> Iterator[Callable[..., None]]:
    """A step of ``total`` units on ``progress`` (default: the current one); yields
    ``advance(n=1, description=None)``. Silent where nothing reports."""
    progress = progress if progress is not None else _CURRENT.get()
    if progress is None:
        yield lambda n=1, description=None: None
        return
    task = progress.add_task(description, total=total)

    def advance(n: int = 1, description: str | None = None) -> None:
        progress.update(task, advance=n, **({"description": description} if description else {}))

    try:
        yield advance
    finally:
        progress.remove_task(task)


def track(ctx: RunContext | None, iterable: Iterable, description: str, total: int | None = None):
    """Iterate, reporting progress on the run's progress (or the current one)."""
    with stage(description, total, getattr(ctx, "progress", None)) as advance:
        for item in iterable:
            yield item
            advance()


class LineProgress:
    """The subset of rich's Progress API evalsuite uses, as plain lines for logs."""

    def __init__(self, console, heartbeat_s: float = 60.0):
        self.console, self.heartbeat_s = console, heartbeat_s
        self._tasks: dict[int, dict] = {}
        self._next = 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        for task in list(self._tasks):
            self.remove_task(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_) -> int:
        self._next += 1
        now = time.perf_counter()
        self._tasks[self._next] = {"description": description, "total": total, "completed": completed, "start": now,
                                   "last": now}
        return self._next

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, advance: float | None = None, completed: float | None = None,
               description: str | None = None, total: float | None = None, **_) -> None:
        t = self._tasks[task]
        t["completed"] = completed if completed is not None else t["completed"] + (advance or 0)
        t["description"] = description or t["description"]
        t["total"] = total if total is not None else t["total"]
        if time.perf_counter() - t["last"] >= self.heartbeat_s:
            t["last"] = time.perf_counter()
            self._print(t, "…")

    def remove_task(self, task: int) -> None:
        self._print(self._tasks.pop(task), "")

    def _print(self, t: dict, tail: str) -> None:
        done = f"{t['completed']:.0f}/{t['total']:.0f}" if t["total"] else "done" if not tail else "running"
        self.console.print(f"{t['description']}: {done} in {time.perf_counter() - t['start']:.1f} s{tail}",
                           highlight=False, soft_wrap=True, markup=False)
