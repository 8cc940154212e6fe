"""Where a task's data lives, and what it is: real dataset folders and the generated mini world.

Real roots resolve in this order: ``--data-root`` (the dataset folder itself), the config
file (``[data_roots]`` table of ``./evalsuite.toml`` or ``~/.config/evalsuite/config.toml``,
or the file named by ``EVALSUITE_CONFIG``), then ``$EVALSUITE_DATA_ROOT/<dataset>``.

A data source's identity is a hash of the bytes a run reads, never of a name or a listing, so a
modified copy of a dataset can never share a cell (or cached features) with the original:

* a mini world is verified against its ``manifest.json`` on every run (a few MB; a corrupted file
  is an error that says how to regenerate);
* a real folder is identified by the sha256 of every file's content. Hashing ImageNet's 1.3 M files
  (≈150 GB) costs minutes once; the per-file digests are kept in a SQLite cache keyed by (path, size,
  mtime), so later runs only stat the files (about 1.3 M stats, seconds) and re-hash what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from contextlib import closing
from functools import lru_cache
from pathlib import Path

from .contracts import DataSource

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class DataNotFoundError(FileNotFoundError):
    """Missing data: the message is one actionable line naming the path that was looked at."""

    def __str__(self) -> str:
        return str(self.args[0])


class DataCorruptedError(ValueError):
    """Data whose bytes no longer match their manifest."""


class DataPathError(ValueError):
    """A dataset file names a path outside the dataset's root (which its identity does not cover)."""


def within(root: str | Path, relative: str | Path, named_in: str | Path) -> Path:
    """``root / relative``, refused in one line when ``relative`` is absolute or climbs out of
    ``root`` (``../``). The data identity hashes the files under the root; a file read from outside
    it could change without changing the cell, so such paths are refused, never followed. (Symbolic
    links inside the root are followed by the identity too, so they stay allowed.)"""
    rel = Path(str(relative))
    inside = not rel.is_absolute() and Path(os.path.normpath(rel)).parts[:1] != ("..",)
    if not inside:
        raise DataPathError(f"{named_in} names {str(relative)!r}, which is outside the data root {root}: every file a "
                            "dataset reads must lie under its root (its identity covers only those); copy the files in")
    return Path(root) / rel


def read_image(path: str | Path, mode: str | None = "RGB"):
    """A PIL image, fully decoded now: a truncated or damaged file is one line naming it (PIL would
    say "image file is truncated" without the file, often later, inside a DataLoader worker)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode else image.copy()
    except FileNotFoundError:
        raise DataNotFoundError(f"image {path} not found") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataCorruptedError(f"{path} is not a readable image ({exc}): restore the file") from None


def read_json_file(path: str | Path):
    """A JSON file, or one line naming it and where its syntax breaks."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise DataCorruptedError(f"{path} is not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataCorruptedError(f"{path} is not a UTF-8 JSON file ({exc})") from None


def require_fields(entry, fields: dict[str, type | tuple[type, ...]], where: str):
    """``entry`` is a dict whose ``fields`` exist with those types; else one line naming ``where``
    (file and entry), the field and what it holds."""
    if not isinstance(entry, dict):
        raise DataCorruptedError(f"{where}: expected an object, got {type(entry).__name__}")
    for name, kind in fields.items():
        if name not in entry:
            raise DataCorruptedError(f"{where}: no {name!r} field")
        value = entry[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise DataCorruptedError(f"{where}: {name!r} must be {want}, got {value!r} ({type(value).__name__})")
    return entry


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
    """sha256 of a file, remembered per (path, size, mtime) in this process: checkpoints can be tens of GB."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return hash_file(path)


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def files_digest(files: dict[str, str]) -> str:
    """Hash of a ``{relative path: sha256}`` manifest; order-independent."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# Mini worlds: verified against their manifest
# ---------------------------------------------------------------------------------------
def read_manifest(root: Path) -> dict | None:
    path = Path(root) / MANIFEST
    return read_json_file(path) if path.is_file() else None


def verify_manifest(root: Path, manifest: dict) -> str:
    """Every listed file exists with its recorded sha256, no file is unlisted and the manifest's own
    digest agrees with its file list; else one line naming the first bad file and how to regenerate.

    Returns the identity computed from the bytes on disk, never the one written in the manifest:
    a copy whose files were edited together with their hashes is another dataset."""
    root = Path(root)
    listed = manifest["files"]
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}
    problems = sorted(set(listed) - present)
    problems = [f"{p} is missing" for p in problems]
    problems += [f"{p} is not in the manifest" for p in sorted(present - set(listed))]
    actual = {} if problems else {p: hash_file(root / p) for p in sorted(listed)}
    problems += [f"{p} does not match its sha256" for p in actual if actual[p] != listed[p]]
    identity = files_digest({**actual, **({"<renderer>": manifest["renderer"]} if "renderer" in manifest else {})})
    if not problems and manifest.get("sha256") != identity:
        problems = [f"{MANIFEST}'s sha256 does not match its files (edited by hand?)"]
    if problems:
        hint = (f"regenerate it with `evalsuite data make-mini {manifest['name']} --size {manifest['size']} "
                f"--seed {manifest['seed']} --force`" if manifest.get("mini") else "restore the original files")
        raise DataCorruptedError(f"{root} is corrupted: {problems[0]}"
                                 f"{f' (+{len(problems) - 1} more)' if len(problems) > 1 else ''}; {hint}")
    return identity


def world_name(size: str = "small", seed: int = 0) -> str:
    """A generated world's name in records and leaderboards (``seed0-small``), also the end of its folders."""
    return f"seed{seed}-{size}"


def manifest_source(root: Path, manifest: dict) -> DataSource:
    """A generated folder as a mini-world source, its identity verified against its manifest."""
    identity = verify_manifest(root, manifest)
    details = {"generator_version": manifest.get("version"), **({"renderer": manifest["renderer"]} if "renderer" in manifest else {})}
    return DataSource(kind="mini", dataset=manifest["name"], root=Path(root), identity=identity,
                      world=world_name(manifest["size"], manifest["seed"]), details=details)


# ---------------------------------------------------------------------------------------
# Real folders: identified by the content of every file, hashed once and cached
# ---------------------------------------------------------------------------------------
def folder_source(dataset: str, data_root: str | Path | None = None) -> DataSource:
    """A real dataset folder. A folder whose manifest says it is generated is mini data, whatever
    the command line said: mini numbers never reach a real leaderboard."""
    root = resolve_data_root(dataset, data_root)
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("mini"):
        return manifest_source(root, manifest)
    return DataSource(kind="real", dataset=dataset, root=root, identity=folder_identity(root))


def identity_cache_path() -> Path:
    return Path(os.environ.get("EVALSUITE_IDENTITY_CACHE", Path.home() / ".cache" / "evalsuite" / "data-identity.sqlite"))


def folder_identity(root: Path) -> str:
    """sha256 over (relative path, content sha256) of every file under ``root`` (hidden files and
    folders are skipped). Per-file digests are cached by (absolute path, size, mtime_ns)."""
    root = Path(root).resolve()
    files = sorted(_walk(root))
    cache = identity_cache_path()
    cache.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with closing(sqlite3.connect(cache, timeout=60)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)")
        fresh = []
        for rel, path, size, mtime in files:
            row = db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (path,)).fetchone()
            if row is not None and row[0] == size and row[1] == mtime:
                sha = row[2]
            else:
                sha = hash_file(Path(path))
                fresh.append((path, size, mtime, sha))
            digest.update(f"{rel}\t{sha}\n".encode())
        if fresh:
            with db:
                db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", fresh)
    return digest.hexdigest()


def _walk(root: Path):
    """(relative path, absolute path, size, mtime_ns) of every regular file, hidden entries skipped."""
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    stat = entry.stat(follow_symlinks=True)
                    yield os.path.relpath(entry.path, root), entry.path, stat.st_size, stat.st_mtime_ns
