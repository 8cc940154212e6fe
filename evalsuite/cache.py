"""Frozen features, extracted once: a content-addressed on-disk cache.

The key covers everything that changes the numbers — backbone name and weights sha256, the feature
reducer (its name and version), the preprocessing, the data manifest hash, the split and the dtype —
so a stale entry can never be read (a pitfall of lm-eval and CLIP_benchmark). Features are stored
as fp16 ``.npy`` files (fp32 for features that come near fp16's range) written batch by batch into a
memory map (peak memory does not grow with the dataset), in a temporary folder renamed into place
when complete. Reads are memory-mapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import EvalsuiteWarning
from .contracts import Backbone, Preprocess, RunContext
from .data import hash_file
from .features import track
from .fileio import atomic_directory, sweep_partials

EXTRACTOR_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("EVALSUITE_FEATURE_CACHE", Path.home() / ".cache" / "evalsuite" / "features"))


def feature_key(backbone: Backbone, reducer: str, data_identity: str, split: str, dtype: str,
                preprocess: Preprocess | None = None) -> str:
    meta = backbone.meta
    identity = {"backbone": meta.name, "weights": meta.weights, "reducer": reducer, "manifest": data_identity,
                "split": split, "dtype": dtype, "preprocess": dataclasses.asdict(preprocess or meta.preprocess),
                "extractor": EXTRACTOR_VERSION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cached_features(backbone: Backbone, dataset: Dataset, ctx: RunContext, reduce: Callable, reducer: str,
                    split: str, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """(features N×… fp16, memory-mapped; labels N) of ``split`` of the run's data, read through
    ``preprocess`` (the data identity and the transform are in the key), extracting on a miss.

    Every cached array's sha256 is stored at write time and checked on every read: a file changed
    or truncated after the fact is evicted and extracted again, never used."""
    dtype = str(ctx.amp_dtype or torch.float32).removeprefix("torch.")
    key = feature_key(backbone, reducer, ctx.data.identity, split, dtype, preprocess)
    folder = cache_root() / key[:2] / key
    sweep_partials(folder.parent)
    if (folder / "meta.json").is_file() and not _intact(folder):
        warnings.warn(f"cached features {folder} do not match their checksums: evicted, extracting again",
                      EvalsuiteWarning, stacklevel=2)
        shutil.rmtree(folder)
    if not (folder / "meta.json").is_file():
        _extract_to(folder, backbone, dataset, ctx, reduce, reducer, split)
    feats = np.load(folder / "features.npy", mmap_mode="c")  # copy-on-write: torch wants a writable array
    labels = np.load(folder / "labels.npy")
    return torch.from_numpy(feats), torch.from_numpy(labels)


ARRAYS = ("features.npy", "labels.npy")
FP16_HEADROOM = 64  # features stored as fp16 only while |x| stays this far inside its range (65504)


def storage_dtype(batch: np.ndarray):
    """fp16 halves the cache; features that reach 1/64 of its range are kept in fp32 instead of failing."""
    return np.float32 if np.abs(batch).max() > np.finfo(np.float16).max / FP16_HEADROOM else np.float16


def _intact(folder: Path) -> bool:
    try:
        expected = json.loads((folder / "meta.json").read_text())["sha256"]
        return all(hash_file(folder / name) == expected[name] for name in ARRAYS)
    except (OSError, KeyError, ValueError):
        return False


@torch.inference_mode()
def _extract_to(folder: Path, backbone, dataset, ctx, reduce, reducer: str, split: str) -> None:
    with atomic_directory(folder) as tmp:
        # a generator of its own: a DataLoader draws its workers' base seed from the global RNG otherwise,
        # and a head initialised after a cold-cache extraction would differ from one after a warm read
        loader = DataLoader(dataset, batch_size=ctx.batch_size, shuffle=False, num_workers=ctx.num_workers,
                            generator=torch.Generator().manual_seed(0), pin_memory=ctx.device.type == "cuda")
        feats, labels, row = None, np.empty(len(dataset), dtype=np.int64), 0
        backbone.eval()
        for images, targets in track(ctx, loader, f"{split} features", total=len(loader)):
            with ctx.autocast():
                out = reduce(backbone, images.to(ctx.device, non_blocking=True)).float().cpu().numpy()
            if not np.isfinite(out).all():
                raise FloatingPointError(f"{backbone.meta.name} gave non-finite {split} features (rows {row}–"
                                         f"{row + len(out) - 1}): the run is failed and nothing is cached")
            if feats is None:  # fp16 unless the first batch comes near its range (timm CNNs without a final norm)
                feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=storage_dtype(out),
                                                  shape=(len(dataset), *out.shape[1:]))
            elif feats.dtype == np.float16 and storage_dtype(out) == np.float32:  # a later batch does: widen, keep going
                feats.flush()
                wide = np.lib.format.open_memmap(tmp / "features32.npy", mode="w+", dtype=np.float32, shape=feats.shape)
                wide[:row] = feats[:row]
                del feats
                os.replace(tmp / "features32.npy", tmp / "features.npy")
                feats = wide
            feats[row : row + len(out)] = out
            labels[row : row + len(out)] = np.asarray(targets)
            row += len(out)
        feats.flush()
        del feats
        np.save(tmp / "labels.npy", labels)
        sums = {name: hash_file(tmp / name) for name in ARRAYS}
        (tmp / "meta.json").write_text(json.dumps({"backbone": backbone.meta.name, "weights": backbone.meta.weights,
                                                   "reducer": reducer, "split": split, "n": len(dataset), "sha256": sums}))


def entries() -> list[dict]:
    out = []
    for meta in sorted(cache_root().glob("*/*/meta.json")):
        size = sum(p.stat().st_size for p in meta.parent.iterdir())
        out.append({"key": meta.parent.name, "path": str(meta.parent), "bytes": size, **json.loads(meta.read_text())})
    return out


def remove(match: str | None = None) -> int:
    """Delete entries whose key starts with, or whose backbone equals, ``match`` (all if None; an
    empty string matches nothing, so an unset shell variable never wipes the cache)."""
    if match is not None and not match.strip():
        raise ValueError("an empty match would select every entry: name a key prefix or a backbone, or pass --all")
    gone = 0
    for entry in entries():
        if match is None or entry["key"].startswith(match) or entry["backbone"] == match:
            shutil.rmtree(entry["path"])
            gone += 1
    return gone
