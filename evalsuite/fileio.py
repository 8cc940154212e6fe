"""Atomic file writes: readers see the old file or the whole new one, never a partial one.

Every file evalsuite writes that another run may read — records, checkpoints, cached features,
mini worlds, scores — goes through here: a temporary sibling in the same folder, then
``os.replace``. Files get the permissions of a normal ``open()`` (the user's umask), not the 0600
of ``mkstemp``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` (e.g. ``lambda p: torch.save(state, p)``), then rename into place."""
    with atomic_path(path) as tmp:
        write(tmp)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``target`` once the block completes; if the
    block fails nothing is left behind. A process killed outright leaves a ``.partial`` folder that
    `sweep_partials` removes later."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep_partials(folder: Path, older_than_s: float = 3600.0) -> int:
    """Remove ``.partial`` folders that a killed process left in ``folder`` more than ``older_than_s``
    seconds ago (younger ones may belong to a process still writing); returns how many."""
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(f".*{PARTIAL_SUFFIX}"):
        if path.is_dir() and time.time() - path.stat().st_mtime > older_than_s:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
