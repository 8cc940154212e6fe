"""The offline mini world: small generated datasets written in the real datasets' layouts.

Each dataset is produced by a registered `MiniDataset` and cached under
``$EVALSUITE_MINI_CACHE`` (default ``~/.cache/evalsuite/mini``) as
``<name>-v<version>-seed<seed>-<size>/``. Creation goes to a temporary sibling folder that is
renamed into place only once complete, with a ``manifest.json`` (every file's sha256) written
last: an interrupted generation leaves nothing a later run would use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from ..contracts import DataSource
from ..data import MANIFEST, file_sha256, files_digest, manifest_source, read_manifest, world_name
from ..features import stage
from ..fileio import atomic_directory, sweep_partials
from ..registry import MINI_DATASETS

Size = Literal["small", "medium", "large"]
SIZES: tuple[Size, ...] = ("small", "medium", "large")


@dataclass(frozen=True)
class MiniDataset:
    """A generator of one mini dataset; bump ``version`` whenever its output changes."""

    name: str
    version: int
    generate: Callable[[Path, Size, int], None]  # (out_dir, size, seed)
    description: str = ""


def register_mini(name: str, version: int, description: str = ""):
    def decorator(fn: Callable[[Path, Size, int], None]):
        MINI_DATASETS.register(name, MiniDataset(name, version, fn, description))
        return fn

    return decorator


def cache_root() -> Path:
    return Path(os.environ.get("EVALSUITE_MINI_CACHE", Path.home() / ".cache" / "evalsuite" / "mini"))


def mini_dir(name: str, size: Size = "small", seed: int = 0) -> Path:
    spec: MiniDataset = MINI_DATASETS.get(name)
    return cache_root() / f"{name}-v{spec.version}-{world_name(size, seed)}"


def renderer() -> str:
    """The renderer of the mini world: images rendered by two MuJoCo versions are two datasets."""
    from importlib.metadata import version

    return f"mujoco {version('mujoco')}"


def write_manifest(root: Path, meta: dict) -> str:
    """Every file's sha256; the world's identity hashes them together with the renderer's version."""
    files = {
        str(p.relative_to(root)): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    meta = {**meta, "renderer": renderer()}
    digest = files_digest({**files, "<renderer>": meta["renderer"]})
    (root / MANIFEST).write_text(json.dumps({**meta, "sha256": digest, "files": files}, indent=1))
    return digest


def ensure_mini(name: str, size: Size = "small", seed: int = 0, force: bool = False) -> Path:
    """Path of the generated dataset, generating it first if the cache has no complete copy."""
    if size not in SIZES:
        raise ValueError(f"mini size must be one of {SIZES}, got {size!r}")
    spec: MiniDataset = MINI_DATASETS.get(name)
    target = mini_dir(name, size, seed)
    if (target / MANIFEST).is_file() and not force:
        return target
    sweep_partials(cache_root())  # generations killed outright more than an hour ago
    with atomic_directory(target) as tmp, stage(f"generating {name} ({size}, seed {seed})"):
        spec.generate(tmp, size, seed)
        write_manifest(tmp, {"name": name, "version": spec.version, "seed": seed, "size": size, "mini": True})
    return target


def mini_source(name: str, size: Size = "small", seed: int = 0) -> DataSource:
    """The mini dataset ``name`` of one world as a run's data source (generated on first use)."""
    root = ensure_mini(name, size, seed=seed)
    return manifest_source(root, read_manifest(root))
