"""Frozen features, extracted once: a content-addressed on-disk cache.

The key covers everything that changes the numbers — backbone name and weights sha256, the feature
reducer (its name and version), the preprocessing, the data manifest hash, the split and the dtype —
so a stale entry can never be read (a pitfall of lm-eval and CLIP_benchmark). Features are stored
as fp16 ``.npy`` files written batch by batch into a memory map (peak memory does not grow with the
dataset), in a temporary folder renamed into place when complete. Reads are memory-mapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .contracts import Backbone, Preprocess, RunContext
from .features import track
from .fileio import atomic_directory

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
    ``preprocess`` (the data identity and the transform are in the key), extracting on a miss."""
    dtype = str(ctx.amp_dtype or torch.float32).removeprefix("torch.")
    key = feature_key(backbone, reducer, ctx.data.identity, split, dtype, preprocess)
    folder = cache_root() / key[:2] / key
    if not (folder / "meta.json").is_file():
        _extract_to(folder, backbone, dataset, ctx, reduce, reducer, split)
    feats = np.load(folder / "features.npy", mmap_mode="c")  # copy-on-write: torch wants a writable array
    labels = np.load(folder / "labels.npy")
    return torch.from_numpy(feats), torch.from_numpy(labels)


@torch.inference_mode()
def _extract_to(folder: Path, backbone, dataset, ctx, reduce, reducer: str, split: str) -> None:
    with atomic_directory(folder) as tmp:
        loader = DataLoader(dataset, batch_size=ctx.batch_size, shuffle=False, num_workers=ctx.num_workers)
        feats, labels, row = None, np.empty(len(dataset), dtype=np.int64), 0
        backbone.eval()
        for images, targets in track(ctx, loader, f"{split} features", total=len(loader)):
            with ctx.autocast():
                out = reduce(backbone, images.to(ctx.device, non_blocking=True)).float().cpu().numpy()
            if feats is None:
                feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                                  shape=(len(dataset), *out.shape[1:]))
            feats[row : row + len(out)] = out
            labels[row : row + len(out)] = np.asarray(targets)
            row += len(out)
        feats.flush()
        del feats
        np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps({"backbone": backbone.meta.name, "weights": backbone.meta.weights,
                                                   "reducer": reducer, "split": split, "n": len(dataset)}))


def entries() -> list[dict]:
    out = []
    for meta in sorted(cache_root().glob("*/*/meta.json")):
        size = sum(p.stat().st_size for p in meta.parent.iterdir())
        out.append({"key": meta.parent.name, "path": str(meta.parent), "bytes": size, **json.loads(meta.read_text())})
    return out


def remove(match: str | None = None) -> int:
    """Delete entries whose key starts with, or whose backbone equals, ``match`` (all if None)."""
    gone = 0
    for entry in entries():
        if match is None or entry["key"].startswith(match) or entry["backbone"] == match:
            shutil.rmtree(entry["path"])
            gone += 1
    return gone
