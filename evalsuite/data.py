"""Where a task's data lives: real dataset roots and the generated mini world.

Real roots resolve in this order: ``--data-root`` (the dataset folder itself), the config
file (``[data_roots]`` table of ``./evalsuite.toml`` or ``~/.config/evalsuite/config.toml``,
or the file named by ``EVALSUITE_CONFIG``), then ``$EVALSUITE_DATA_ROOT/<dataset>``.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class DataNotFoundError(FileNotFoundError):
    """Missing data: the message is one actionable line naming the path that was looked at."""

    def __str__(self) -> str:
        return str(self.args[0])


def config_paths() -> list[Path]:
    explicit = os.environ.get("EVALSUITE_CONFIG")
    if explicit:
        return [Path(explicit)]
    return [Path.cwd() / "evalsuite.toml", Path.home() / ".config" / "evalsuite" / "config.toml"]


def _configured_roots() -> tuple[dict[str, str], Path | None]:
    for path in config_paths():
        if path.is_file():
            with path.open("rb") as fh:
                return dict(tomllib.load(fh).get("data_roots", {})), path
    return {}, None


def resolve_data_root(dataset: str, data_root: str | Path | None = None) -> Path:
    """The folder holding ``dataset``, or a `DataNotFoundError` saying where we looked."""
    hint = "pass --data-root DIR, set EVALSUITE_DATA_ROOT, add it to evalsuite.toml [data_roots], or use --data mini"
    if data_root is not None:
        path, origin = Path(data_root).expanduser(), "--data-root"
    else:
        roots, config = _configured_roots()
        if dataset in roots:
            path, origin = Path(roots[dataset]).expanduser(), f"{config} [data_roots]"
        elif os.environ.get("EVALSUITE_DATA_ROOT"):
            path, origin = Path(os.environ["EVALSUITE_DATA_ROOT"]).expanduser() / dataset, "EVALSUITE_DATA_ROOT"
        else:
            raise DataNotFoundError(f"no data root configured for {dataset!r}: {hint}")
    if not path.is_dir():
        raise DataNotFoundError(f"{dataset} data not found at {path} (from {origin}): {hint}")
    return path


MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): checkpoints can be tens of GB."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def files_digest(files: dict[str, str]) -> str:
    """Hash of a ``{relative path: sha256}`` manifest; order-independent."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def manifest_sha256(root: Path) -> str:
    """Identity of a data folder for result records.

    A folder with our ``manifest.json`` (the mini world) is identified by its file hashes.
    A real dataset is identified by its listing (relative paths and sizes): hashing every byte
    of ImageNet per run would cost minutes and catches nothing the listing misses in practice.
    """
    manifest = Path(root) / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["sha256"]
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()
