"""Versioned result records: one JSON per run, with the provenance to trust or reproduce it.

A record is written atomically (temp file in the same folder + ``os.replace``) so a killed
run never leaves a partial file. A failed run is recorded with ``status="failed"`` and its
error, and never carries metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .contracts import Metric

SCHEMA_VERSION = 1
Status = Literal["ok", "failed"]


@dataclass
class RunRecord:
    run_id: str
    cell_key: str
    status: Status
    started_at: str
    finished_at: str
    evalsuite_version: str
    git_sha: str | None
    git_dirty: bool | None
    task: dict[str, Any]  # name, label, version, family, params, primary_metric, tolerance, splits
    data: dict[str, Any]  # source ("real" | "mini"), dataset, root, manifest_sha256; mini: world ("seed0-small")
    backbone: dict[str, Any]  # name, family, weights (sha256 or "random"), num_params
    seed: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    selected: dict[str, Any] = field(default_factory=dict)
    per_sample: dict[str, list[float]] = field(default_factory=dict)  # metric → report-split scores (mean = value)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status == "failed" and self.metrics:
            raise ValueError("a failed run carries no metrics")
        if self.status == "failed" and self.per_sample:
            raise ValueError("a failed run carries no per-sample scores")
        if self.status == "ok":
            for m in self.metrics:
                value = m["value"]
                if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
                    raise ValueError(f"metric {m['name']} is not a finite number: {value!r}")
            values = {m["name"]: m["value"] for m in self.metrics}
            for name, scores in self.per_sample.items():
                if name not in values or not scores or not all(math.isfinite(v) for v in scores):
                    raise ValueError(f"per-sample scores of {name!r} must be finite and belong to a reported metric")
                if abs(sum(scores) / len(scores) - values[name]) > 1e-3 * max(1.0, abs(values[name])):
                    raise ValueError(f"the per-sample scores of {name!r} average {sum(scores) / len(scores):.6g}, "
                                     f"not the reported {values[name]:.6g}")

    @property
    def metric_objects(self) -> list[Metric]:
        return [Metric(**m) for m in self.metrics]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"record schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> "RunRecord":
        return cls.from_dict(json.loads(Path(path).read_text()))


def cell_key(*, task: str, task_version: int, params: dict[str, Any], data_source: str,
             manifest_sha256: str | None, backbone: str, weights: str, seed: int) -> str:
    """Identity of one leaderboard cell run: equal keys mean the same computation."""
    payload = json.dumps(
        dict(task=task, task_version=task_version, params=params, data_source=data_source,
             manifest=manifest_sha256, backbone=backbone, weights=weights, seed=seed),
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def record_path(out_dir: Path, backbone: str, task_label: str, key: str) -> Path:
    return Path(out_dir) / backbone / task_label.replace("/", "__") / f"{key[:16]}.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(target: Path):
    """Yield a temporary sibling folder that replaces ``target`` once the block completes; if the
    block fails (or the process is killed) nothing is left that a later run would mistake for it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_record(record: RunRecord, path: Path) -> Path:
    atomic_write_text(path, record.to_json())
    return path


def iter_records(root: Path):
    """All records under ``root`` (temp files of interrupted writes are never matched)."""
    for path in sorted(Path(root).rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):  # temp files, .work/
            continue
        yield path, RunRecord.load(path)
