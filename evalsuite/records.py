"""Versioned result records: one JSON per run, with the provenance to trust or reproduce it.

A record is written atomically (temp file in the same folder + ``os.replace``) so a killed
run never leaves a partial file. A failed run is recorded with ``status="failed"`` and its
error, and never carries metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import EvalsuiteWarning
from .contracts import Metric
from .fileio import atomic_write_text
from .metrics import dataset_statistic

# 2: data.identity (was manifest_sha256), task.protocol/operational, settings
# 3: task.identity (what moves a score) and task.variant (its part that differs from the protocol's defaults)
SCHEMA_VERSION = 3
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
    data: dict[str, Any]  # source ("real" | "mini"), dataset, root, identity; mini: world ("seed0-small")
    backbone: dict[str, Any]  # name, family, weights (sha256 or "random"), num_params
    seed: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    selected: dict[str, Any] = field(default_factory=dict)
    per_sample: dict[str, list[float]] = field(default_factory=dict)  # metric → report-split scores (mean = value)
    dataset_samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric → per-image areas (statistic = value)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # operational: batch size, workers, device, amp
    artifacts: dict[str, str] = field(default_factory=dict)  # name → file beside the record (e.g. test-dev answers)
    error: str | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status == "failed" and self.metrics:
            raise ValueError("a failed run carries no metrics")
        if self.status == "failed" and (self.per_sample or self.dataset_samples):
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
            for name, samples in self.dataset_samples.items():
                whole = dataset_statistic(samples) if name in values else float("nan")
                if not abs(whole - values.get(name, whole)) <= 1e-3 * max(1.0, abs(whole)):
                    raise ValueError(f"the dataset samples of {name!r} give {whole:.6g}, not the reported "
                                     f"{values.get(name, float('nan')):.6g} (or belong to no reported metric)")

    @property
    def metric_objects(self) -> list[Metric]:
        return [Metric(**m) for m in self.metrics]

    def to_json(self) -> str:
        """Indented JSON, except the per-sample arrays: one compact line per metric, whole numbers
        without a decimal point (50,000 ImageNet top-1 scores: 0.18 MB instead of 0.63 MB)."""
        data = asdict(self)
        bulky = {key: data.pop(key) for key in ("per_sample", "dataset_samples")}
        text = json.dumps(data, indent=2, sort_keys=True)
        lines = []
        for key, entries in bulky.items():
            body = ",\n".join(f"    {json.dumps(name)}: {json.dumps(_compact(value), separators=(',', ':'))}"
                               for name, value in sorted(entries.items()))
            lines.append(f'  "{key}": {{\n{body}\n  }}' if entries else f'  "{key}": {{}}')
        return text[: text.rindex("}")].rstrip() + ",\n" + ",\n".join(lines) + "\n}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        version = data.get("schema_version")
        missing = sorted(f for f in _REQUIRED if f not in data)
        if missing and version in (1, 2, SCHEMA_VERSION):
            raise ValueError(f"not an evalsuite record: missing fields {missing}")
        if version == 1:
            data = _from_v2(_from_v1(data))
        elif version == 2:
            data = _from_v2(data)
        elif version != SCHEMA_VERSION:
            raise ValueError(f"record schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
        missing = sorted(f for f in _REQUIRED if f not in data)
        if missing:
            raise ValueError(f"not an evalsuite record: missing fields {missing}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"not an evalsuite record: unknown fields {unknown}")
        if not isinstance(data["task"], dict) or not isinstance(data["task"].get("variant"), dict):
            raise ValueError("not an evalsuite record: task.variant (which experiment it is) is missing")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> "RunRecord":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not an evalsuite record (a JSON {type(data).__name__})")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


_REQUIRED = [f for f, spec in RunRecord.__dataclass_fields__.items() if spec.default is spec.default_factory is MISSING]


def _compact(value):
    """Whole floats as integers (``100`` for ``100.0``): the per-sample arrays' bulk."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    return value


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record read as schema 2: the data folder's hash becomes its identity."""
    data = dict(data, schema_version=2)
    if isinstance(data.get("data"), dict) and "manifest_sha256" in data["data"]:
        data["data"] = {k if k != "manifest_sha256" else "identity": v for k, v in data["data"].items()}
    return data


def _from_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-2 record read as schema 3. Its identity is its parameters less the operational ones
    (plus the process count of a DDP run); its variant is found by resolving those parameters against
    the task's protocol as registered now. A record whose task or parameters no longer resolve is
    refused (the caller names the file): guessing would put it in the wrong row."""
    data = dict(data, schema_version=SCHEMA_VERSION)
    task = dict(data.get("task") or {})
    if task.get("name") == "bench":  # throughput: its label is its settings
        data["task"] = {**task, "identity": dict(task.get("params", {})), "variant": {}}
        return data
    if not {"name", "protocol", "params"} <= set(task):
        raise ValueError("a schema-2 record without its task's protocol and parameters: cannot tell which experiment it is")
    processes = int((data.get("settings") or {}).get("world_size") or 1)
    extra = {"processes": processes} if processes > 1 else {}
    operational = task.pop("operational", ())  # schema 2 kept a checkpoint interval among the parameters
    scored = {k: v for k, v in task["params"].items() if k not in operational}
    from .registry import TASKS

    try:
        config = TASKS.get(task["name"]).resolve(scored, protocol=task["protocol"],
                                                 mini=(data.get("data") or {}).get("source") == "mini")
    except (KeyError, ValueError) as exc:
        raise ValueError(f"a schema-2 record whose parameters no longer resolve ({exc}): rerun the cell") from None
    data["task"] = {**task, "identity": {"protocol": task["protocol"], **scored, **extra},
                    "variant": {**config.variant(), **extra}}
    return data


def variant_text(variant: dict[str, Any]) -> str:
    """``"k=5 temperature=0.5"``: a variant as the suffix that names it in every view ('' = the default)."""
    def show(value: Any) -> str:
        return ",".join(map(show, value)) if isinstance(value, (list, tuple)) else str(value)

    return " ".join(f"{key}={show(value)}" for key, value in sorted(variant.items()))


def cell_key(*, task: str, task_version: int, identity: dict[str, Any], data_identity: str, backbone: str,
             weights: str, seed: int) -> str:
    """Identity of one leaderboard cell run: equal keys mean the same computation. ``identity`` is the
    protocol and its score-affecting parameters (`TaskConfig.identity`); operational settings never enter."""
    payload = json.dumps(
        dict(task=task, task_version=task_version, identity=identity, data=data_identity, backbone=backbone,
             weights=weights, seed=seed),
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def record_path(out_dir: Path, backbone: str, task_label: str, key: str) -> Path:
    return Path(out_dir) / backbone / task_label.replace("/", "__") / f"{key[:16]}.json"


def artifacts_dir(path: Path) -> Path:
    """Where the files a run produced besides its record live: ``<record stem>.artifacts/``."""
    return Path(path).with_suffix(".artifacts")


def failed_path(path: Path) -> Path:
    """Where a failed attempt of the cell at ``path`` is recorded: beside its last good record, never over it."""
    return Path(path).with_suffix(".failed.json")


def write_record(record: RunRecord, path: Path) -> Path:
    atomic_write_text(path, record.to_json())
    return path


def iter_records(root: Path, failed: bool = False, skipped: list[str] | None = None):
    """``(path, record)`` for every record under ``root``; temp files and work dirs are never matched.
    A file that is not a readable record is skipped, never silently: its path and reason go to
    ``skipped`` (or, without that list, to a warning). Failed attempts (``*.failed.json``) are
    included only with ``failed=True``."""
    for path in sorted(Path(root).rglob("*.json")):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") or part.endswith(".artifacts") for part in parts):  # temp files, .work/, outputs
            continue
        if path.name.endswith(".failed.json") and not failed:
            continue
        try:
            yield path, RunRecord.load(path)
        except (OSError, ValueError) as exc:
            reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            if skipped is None:
                warnings.warn(f"skipped {reason}", RecordWarning, stacklevel=2)
            else:
                skipped.append(reason)


class RecordWarning(EvalsuiteWarning):
    """A file in a results folder that is not a readable record."""
