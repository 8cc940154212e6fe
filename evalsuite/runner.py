"""Run one (backbone, task) cell and record it.

The runner owns everything that is the same for every task: resolving names, data and weights,
the cell identity (skip-if-done), seeding, timing, failure capture and the atomic record write.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoints import BackboneSpec, create_backbone, resolve_weights
from .contracts import RunContext, TaskSpec
from .data import file_sha256, manifest_sha256, resolve_data_root
from .environment import default_device, environment, git_state, seed_everything
from .mini import Size, ensure_mini, world_name
from .records import RunRecord, cell_key, record_path, write_record
from .registry import BACKBONES, TASKS

DEFAULT_OUT = Path("results/runs")


class RunFailed(RuntimeError):
    """The task raised or produced a non-finite metric; the failed record is at ``path``."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


@dataclass
class CellResult:
    record: RunRecord
    path: Path
    skipped: bool


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolve_task(task_name: str, params: dict[str, Any] | None = None, data: str = "real"):
    """The task and its spec with the mini-world defaults (if ``data='mini'``), then ``params``."""
    task = TASKS.get(task_name)()
    return task, task.spec.resolve(params, mini=data == "mini")


def run_cell(
    backbone: str,
    task: str,
    *,
    weights: str | None = None,
    data: str = "real",
    data_root: str | Path | None = None,
    mini_size: Size = "small",
    mini_seed: int = 0,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    out_dir: Path = DEFAULT_OUT,
    force: bool = False,
    device: torch.device | None = None,
    amp: bool | None = None,
    batch_size: int = 64,
    progress: Any = None,
    weights_label: str | None = None,
) -> CellResult:
    """Evaluate one cell and write its record; an identical finished cell is returned as skipped.

    ``weights_label`` names the checkpoint in leaderboards (default: the first 8 hex digits of its
    sha256); random weights keep the bare backbone name. ``mini_size``/``mini_seed`` pick the mini
    world (``data='mini'``); ``seed`` seeds the run itself. Under torchrun every rank runs the cell
    (training is DDP, evaluation is repeated) and rank 0 alone writes the record.
    """
    if data not in ("real", "mini"):
        raise ValueError(f"data must be 'real' or 'mini', got {data!r}")
    bb_spec = BACKBONES.get(backbone)  # fail fast, with did-you-mean, before any data work
    task_obj, spec = resolve_task(task, params, data)

    if data == "mini":
        if spec.mini_dataset is None:
            raise ValueError(f"task {spec.name!r} has no mini dataset")
        root = ensure_mini(spec.mini_dataset, mini_size, seed=mini_seed)
    else:
        root = resolve_data_root(spec.dataset, data_root)
    manifest = manifest_sha256(root)

    weights_id = "random"
    if isinstance(bb_spec, BackboneSpec):
        path = resolve_weights(bb_spec, weights)
        weights_id = file_sha256(path) if path is not None else "random"
    key = cell_key(task=spec.name, task_version=spec.version, params=dict(spec.params), data_source=data,
                   manifest_sha256=manifest, backbone=backbone, weights=weights_id, seed=seed)
    out_path = record_path(out_dir, backbone, spec.label, key)
    if out_path.is_file() and not force:
        existing = RunRecord.load(out_path)
        if existing.status == "ok":
            return CellResult(existing, out_path, skipped=True)

    is_writer = int(os.environ.get("RANK", "0")) == 0
    device = device or default_device()
    amp_dtype = torch.bfloat16 if (amp if amp is not None else device.type == "cuda") else None
    work_dir = Path(out_dir) / ".work" / key[:16]  # a killed training run resumes from here
    ctx = RunContext(data_root=root, data_source=data, seed=seed, device=device, amp_dtype=amp_dtype,
                     batch_size=batch_size, progress=progress, work_dir=work_dir)
    sha, dirty = git_state()
    started, t0 = _now(), time.perf_counter()
    base = dict(
        run_id=f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        cell_key=key, started_at=started, evalsuite_version=__version__, git_sha=sha, git_dirty=dirty,
        task=_task_info(spec), seed=seed,
        data={"source": data, "dataset": spec.mini_dataset if data == "mini" else spec.dataset,
              "root": str(root), "manifest_sha256": manifest,
              **({"world": world_name(mini_size, mini_seed)} if data == "mini" else {})},
        environment=environment(device, amp_dtype),
    )
    label = backbone if weights_id == "random" else f"{backbone}@{weights_label or weights_id[:8]}"
    bb_info = {"name": backbone, "label": label, "weights": weights_id}
    try:
        seed_everything(seed)
        t_load = time.perf_counter()
        model = create_backbone(backbone, weights).to(device)
        bb_info |= {"family": model.meta.family, "num_params": model.meta.num_params}
        t_task = time.perf_counter()
        output = task_obj.run(model, spec, ctx)
        bad = [m.name for m in output.metrics if not math.isfinite(m.value)]
        if bad:
            raise FloatingPointError(f"non-finite metric(s) {bad}: the run is failed, not a number")
        if not any(m.primary and m.name == spec.primary_metric for m in output.metrics):
            raise RuntimeError(f"task {spec.name} did not report its primary metric {spec.primary_metric!r}")
        t_end = time.perf_counter()
        record = RunRecord(
            **base, status="ok", finished_at=_now(), backbone=bb_info,
            metrics=[m.__dict__ for m in output.metrics], selected=output.selected,
            per_sample={k: [round(float(v), 4) for v in scores] for k, scores in output.per_sample.items()},
            timings={"load_s": t_task - t_load, "task_s": t_end - t_task, "total_s": t_end - t0},
        )
    except Exception as exc:
        record = RunRecord(
            **base, status="failed", finished_at=_now(), backbone=bb_info,
            timings={"total_s": time.perf_counter() - t0},
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}",
        )
        if is_writer:
            write_record(record, out_path)
        raise RunFailed(f"{backbone} × {spec.label} failed: {type(exc).__name__}: {exc}", out_path) from exc
    if is_writer:
        write_record(record, out_path)
        shutil.rmtree(work_dir, ignore_errors=True)
    return CellResult(record, out_path, skipped=False)


def _task_info(spec: TaskSpec) -> dict[str, Any]:
    return {
        "name": spec.name, "label": spec.label, "version": spec.version, "family": spec.family,
        "params": dict(spec.params), "primary_metric": spec.primary_metric,
        "higher_is_better": spec.higher_is_better, "tolerance": spec.tolerance,
        "selection_split": spec.selection_split, "report_split": spec.report_split,
        "leaderboard_metrics": list(spec.leaderboard_metrics),
    }
