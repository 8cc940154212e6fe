"""Run one (backbone, task protocol) cell and record it.

The runner owns everything that is the same for every task: resolving names, parameters, data
and weights (all validated before any work starts), the cell identity (skip-if-done), seeding,
timing, failure capture and the atomic record write.

A cell is a `CellSpec` (evalsuite.cell); its identity is (task, version, protocol, the protocol's
score-affecting parameters, processes, data identity, backbone, weights, seed). `RunSettings` —
checkpoint interval, extraction batch size, workers, device — are recorded but never hashed, so
changing one skips a finished cell and resumes a killed one from the same work dir.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__, distributed
from .cell import DEFAULT_OUT, CellError, CellSpec, RunSettings
from .checkpoints import BackboneSpec, create_backbone, resolve_weights
from .contracts import DataSource, RunContext, TaskConfig
from .data import file_sha256, folder_source
from .environment import default_device, environment, git_state, parse_device, seed_everything
from .fileio import atomic_write_bytes, atomic_write_text
from .mini import mini_source
from .records import RunRecord, artifacts_dir, cell_key, failed_path, record_path, write_record
from .registry import BACKBONES, TASKS


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


@dataclass(frozen=True)
class Cell:
    """A resolved cell before it runs: its spec, resolved config, data, weights identity, key and path."""

    spec: CellSpec
    config: TaskConfig
    source: DataSource
    weights_id: str
    key: str
    path: Path

    @property
    def backbone(self) -> str:
        return self.spec.backbone

    @property
    def seed(self) -> int:
        return self.spec.seed


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def work_dir_of(out_dir: Path, cell: Cell) -> Path:
    """Where a cell's training checkpoints live, keyed like the cell: a killed run resumes from here."""
    return Path(out_dir) / ".work" / cell.key[:16]


def resolve_cell(spec: CellSpec, out_dir: Path = DEFAULT_OUT) -> Cell:
    """The cell's weights and data identity (the data source is asked once), its key and record path.

    The key hashes (task, version, protocol and its score-affecting parameters, processes above 1,
    data identity, backbone, weights, seed): per-process random streams (augmentation, dropout,
    drop-path) and mixup pairs within each process's batch make a DDP run another computation than a
    one-process run, so the two are separate cells."""
    bb_spec = BACKBONES.get(spec.backbone)
    task_obj = TASKS.get(spec.task)
    config = spec.config()
    weights_id = "random"
    if isinstance(bb_spec, BackboneSpec):
        path = resolve_weights(bb_spec, spec.weights)
        weights_id = file_sha256(path) if path is not None else "random"
    data = spec.data
    source = task_obj.data_source(data.kind, data.root, data.mini_size, data.mini_seed, config)
    if source is None:  # the task's folder, or its generated mini world
        if data.kind == "mini":
            if task_obj.mini_dataset is None:
                raise CellError(f"task {task_obj.name!r} has no mini world")
            source = mini_source(task_obj.mini_dataset, data.mini_size, data.mini_seed)  # type: ignore[arg-type]
        else:
            source = folder_source(task_obj.dataset, data.root)
    if source.kind == "mini" and not config.mini:  # a generated folder passed as real data is mini data
        config = spec.config(mini=True)
    task_obj.check_source(config, source)
    key = cell_key(task=config.name, task_version=config.version, identity=config.record(spec.processes)["identity"],
                   data_identity=source.identity, backbone=spec.backbone, weights=weights_id, seed=spec.seed)
    return Cell(spec, config, source, weights_id, key, record_path(out_dir, spec.backbone, config.label, key))


def run_cell(spec: CellSpec, settings: RunSettings = RunSettings(), progress: Any = None) -> CellResult:
    """Evaluate one cell and write its record; an identical finished cell is returned as skipped.

    Under torchrun every rank runs the cell (training is DDP, evaluation is repeated) and rank 0
    alone writes the record; ``spec.processes`` must be the world size. A failed run is recorded
    beside the cell's last good record, never over it."""
    if spec.processes != distributed.world_size():
        raise CellError(f"{spec.name} is a {spec.processes}-process cell, but this is a run of {distributed.world_size()} "
                        f"process(es): run it under `torchrun --nproc_per_node {spec.processes}`")
    device = parse_device(settings.device) if settings.device is not None else default_device()
    cell = resolve_cell(spec, settings.out)
    if cell.path.is_file() and not settings.force:
        existing = RunRecord.load(cell.path)
        if existing.status == "ok":
            return CellResult(existing, cell.path, skipped=True)
    if settings.force:  # from scratch: a killed run's checkpoints are not resumed either
        shutil.rmtree(work_dir_of(settings.out, cell), ignore_errors=True)
    return execute(cell, settings, device, progress)


def evaluate(backbone: str, task: str, *, progress: Any = None, **options: Any) -> CellResult:
    """The Python API: one cell from keyword options, each routed to `CellSpec.build` or
    `RunSettings` by name (no third spelling of either): ``evaluate("mae-b16", "imagenet",
    data="mini", params={"k": 10}, out="results/runs")``."""
    spec_keys = set(inspect.signature(CellSpec.build).parameters) - {"cls", "backbone", "task"}
    settings_keys = {f.name for f in dataclasses.fields(RunSettings)}
    unknown = sorted(set(options) - spec_keys - settings_keys)
    if unknown:
        raise TypeError(f"evaluate() got unknown options {unknown}")
    options.setdefault("processes", distributed.world_size())
    spec = CellSpec.build(backbone, task, **{k: v for k, v in options.items() if k in spec_keys})
    return run_cell(spec, RunSettings(**{k: v for k, v in options.items() if k in settings_keys}), progress)


def execute(cell: Cell, settings: RunSettings, device: torch.device, progress: Any = None) -> CellResult:
    config, backbone, spec = cell.config, cell.backbone, cell.spec
    is_writer = distributed.is_main_process()
    amp_dtype = torch.bfloat16 if (settings.amp if settings.amp is not None else device.type == "cuda") else None
    work_dir = work_dir_of(settings.out, cell)
    ctx = RunContext(data=cell.source, seed=cell.seed, device=device, amp_dtype=amp_dtype, batch_size=settings.batch_size,
                     num_workers=settings.num_workers, progress=progress, work_dir=work_dir,
                     checkpoint_interval=settings.checkpoint_interval)
    sha, dirty = git_state()
    started, t0 = _now(), time.perf_counter()
    base: dict[str, Any] = dict(
        run_id=f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        cell_key=cell.key, started_at=started, evalsuite_version=__version__, git_sha=sha, git_dirty=dirty,
        task=config.record(spec.processes), seed=cell.seed, data=cell.source.record(),
        environment=environment(device, amp_dtype),
        settings={"batch_size": settings.batch_size, "num_workers": settings.num_workers, "device": str(device),
                  "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
                  "checkpoint_interval": settings.checkpoint_interval, "world_size": distributed.world_size()},
    )
    label = backbone if cell.weights_id == "random" else f"{backbone}@{spec.weights_label or cell.weights_id[:8]}"
    # "official": the family's published checkpoint (the default file), the only runs published numbers describe
    bb_info = {"name": backbone, "label": label, "weights": cell.weights_id,
               "official": spec.weights is None and cell.weights_id != "random"}
    seed_everything(cell.seed)
    t_load = time.perf_counter()
    model = create_backbone(backbone, spec.weights).to(device)  # a checkpoint that does not fit is the user's error: no record
    bb_info |= {"family": model.meta.family, "num_params": model.meta.num_params}
    if getattr(model, "checkpoint_dtypes", None):
        bb_info["checkpoint_dtypes"] = model.checkpoint_dtypes  # e.g. a bfloat16 file loaded into float32
    failed = failed_path(cell.path)
    earlier_failure = failed.read_bytes() if is_writer and failed.is_file() else None
    if is_writer:  # a process killed outright (out of memory, SIGKILL, a crash) still leaves a failed record
        write_record(RunRecord(**base, status="failed", finished_at=started, backbone=bb_info, timings={},
                               error=f"unfinished: started at {started} (pid {os.getpid()} on {socket.gethostname()}) and "
                                     "never finished: still running, or the process died (killed, out of memory, a "
                                     "crash); run the cell again to resume it from its work dir"), failed)
    try:
        t_task = time.perf_counter()
        output = config.protocol.run(model, config, ctx)
        bad = [m.name for m in output.metrics if not math.isfinite(m.value)]
        if bad:
            raise FloatingPointError(f"non-finite metric(s) {bad}: the run is failed, not a number")
        if not any(m.primary and m.name == config.primary_metric for m in output.metrics):
            raise RuntimeError(f"{config.label} did not report its primary metric {config.primary_metric!r}")
        t_end = time.perf_counter()
        artifacts = {name: f"{artifacts_dir(cell.path).name}/{name}" for name in output.artifacts}
        record = RunRecord(
            **base, status="ok", finished_at=_now(), backbone=bb_info,
            metrics=[m.__dict__ for m in output.metrics], selected=output.selected,
            per_sample={k: [round(float(v), 4) for v in scores] for k, scores in output.per_sample.items()},
            dataset_samples=output.dataset_samples,
            timings={"load_s": t_task - t_load, "task_s": t_end - t_task, "total_s": t_end - t0}, artifacts=artifacts,
        )
    except Exception as exc:
        record = RunRecord(
            **base, status="failed", finished_at=_now(), backbone=bb_info,
            timings={"total_s": time.perf_counter() - t0},
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}",
        )
        if is_writer:
            write_record(record, failed)
        raise RunFailed(f"{backbone} × {config.label} failed: {type(exc).__name__}: {exc}", failed) from exc
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): no record of a run that did not end; the work dir resumes it
        if is_writer:
            if earlier_failure is None:
                failed.unlink(missing_ok=True)
            else:
                atomic_write_bytes(failed, earlier_failure)
        raise
    if is_writer:
        for name, text in output.artifacts.items():  # before the record that names them
            atomic_write_text(cell.path.parent / artifacts[name], text)
        write_record(record, cell.path)
        failed_path(cell.path).unlink(missing_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    return CellResult(record, cell.path, skipped=False)
