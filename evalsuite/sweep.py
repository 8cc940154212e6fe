"""`evalsuite sweep`: backbones × tasks × protocols × seeds × weights, one `evalsuite run` per cell.

Executors: ``local`` (each cell in this process, one after the other), ``torchrun`` (each cell under
``torch.distributed.run`` with N processes, as ``evalsuite run --cell FILE``: DDP training, rank 0 writes) and ``slurm`` (a submitit
job array, one job per cell, with torchrun's environment in every task; ``--cluster local`` runs the
same jobs on this machine). A sweep is resumable because a cell is its identity: a finished cell is
skipped, a failed or killed one runs again (a killed run resumes from its work dir). Two sweeps may
share an output folder: records are written atomically, the same cell twice ends as one good record.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .cell import CellSpec, DataSpec, RunSettings, write_cell_file
from .data import world_name
from .records import RunRecord, iter_records
from .registry import TASKS

EXECUTORS = ("local", "torchrun", "slurm")


@dataclass(frozen=True)
class SweepCell:
    """One planned cell: its validated spec, or why it cannot be built (the sweep runs the others)."""

    name: str
    spec: CellSpec | None
    error: str | None = None


def plan(backbones: Iterable[str], tasks: Iterable[str], protocols: Iterable[str] = (), seeds: int = 1,
         weights: Iterable[str] = (), first_seed: int = 0, *, data: DataSpec = DataSpec(),
         params: Mapping[str, Any] | None = None, processes: int = 1) -> list[SweepCell]:
    """Every cell, in a stable order, each built by `CellSpec.build` (the one validator). ``protocols``
    apply to the tasks that have them; a task that has none of them is an error (a typo would
    otherwise silently drop the task). A cell whose parameters do not apply to it is planned with its
    error: the other cells run, and the sweep fails at the end."""
    backbones, tasks, protocols = list(backbones), list(tasks), list(protocols)
    if not backbones or not tasks:
        raise ValueError("a sweep needs at least one --backbones and one --tasks entry")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    per_task = {}
    for task in tasks:
        known = list(TASKS.get(task).protocols)
        chosen = [p for p in protocols if p in known] if protocols else [None]
        if not chosen:
            raise ValueError(f"task {task} has none of the protocols {', '.join(protocols)} (it has {', '.join(known)})")
        per_task[task] = chosen
    out = []
    checkpoints: list[str | None] = list(weights) or [None]
    for backbone, w, task in itertools.product(backbones, checkpoints, tasks):
        for protocol in per_task[task]:
            for seed in range(first_seed, first_seed + seeds):
                name = f"{backbone}{' @ ' + w if w else ''} × {task}{'/' + protocol if protocol else ''} · seed {seed}"
                try:
                    spec = CellSpec.build(backbone, task, protocol=protocol, params=params, weights=w,
                                          data=data.kind, data_root=data.root, mini_size=data.mini_size,
                                          mini_seed=data.mini_seed, seed=seed, processes=processes)
                except (ValueError, KeyError) as exc:
                    out.append(SweepCell(name, None, f"{type(exc).__name__}: {exc}"))
                    continue
                out.append(SweepCell(spec.name, spec))
    return out


def state(cell: SweepCell, settings: RunSettings) -> tuple[str, Path]:
    """("done" | "failed" | "todo", the record path): a cell is done when its record is ok."""
    from .records import failed_path
    from .runner import resolve_cell

    if cell.spec is None:
        raise ValueError(cell.error)
    resolved = resolve_cell(cell.spec, settings.out)
    if resolved.path.is_file() and RunRecord.load(resolved.path).status == "ok":
        return "done", resolved.path
    if failed_path(resolved.path).is_file():
        return "failed", failed_path(resolved.path)
    return "todo", resolved.path


def estimated_seconds(spec: CellSpec | None, records: list[RunRecord]) -> float | None:
    """From finished records of the same backbone, task, protocol and data (real, or the same mini
    world; any seed or weights), or None."""
    if spec is None:
        return None
    world = world_name(spec.data.mini_size, spec.data.mini_seed) if spec.data.kind == "mini" else ""
    times = [r.timings["total_s"] for r in records
             if r.status == "ok" and r.backbone.get("name") == spec.backbone and r.task.get("name") == spec.task
             and r.task.get("protocol") == spec.protocol and r.data.get("source") == spec.data.kind
             and (r.data.get("world", "") or "") == world and r.timings.get("total_s")]
    return sum(times) / len(times) if times else None


def known_records(out: Path) -> list[RunRecord]:
    return [rec for _, rec in iter_records(out, skipped=[])] if Path(out).is_dir() else []


@dataclass
class Outcome:
    cell: SweepCell
    status: str  # done (skipped) | ok | failed
    seconds: float = 0.0
    value: float | None = None
    error: str | None = None


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def run_sweep(cells: list[SweepCell], settings: RunSettings, executor: str = "local", slurm=None,
              on_outcome: Callable[[Outcome], None] = lambda o: None) -> Summary:
    """Run every cell that is not done; a failing cell never stops the sweep (see `Summary.failed`).
    torchrun and Slurm cells run as ``evalsuite run --cell FILE`` with the cell's own JSON, so they
    are the very cells a local sweep or `evalsuite run` would run."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    summary = Summary()
    todo = []
    for cell in cells:
        try:
            status, _ = state(cell, settings)
        except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:  # this cell's input is bad: say so at the end
            error = cell.error or f"{type(exc).__name__}: {exc}"
            summary.outcomes.append(Outcome(cell, "failed", error=error))
            on_outcome(summary.outcomes[-1])
            continue
        if status == "done":
            summary.outcomes.append(Outcome(cell, "done"))
            on_outcome(summary.outcomes[-1])
        else:
            todo.append(cell)
    if executor == "slurm":
        outcomes = _run_slurm(todo, settings, slurm)
    else:
        outcomes = (_run_local(cell, settings) if executor == "local" else _run_torchrun(cell, settings) for cell in todo)
    for outcome in outcomes:
        summary.outcomes.append(outcome)
        on_outcome(outcome)
    return summary


def _run_local(cell: SweepCell, settings: RunSettings) -> Outcome:
    from .runner import RunFailed, run_cell

    t0 = time.perf_counter()
    assert cell.spec is not None  # cells without a spec never leave `state`
    try:
        result = run_cell(cell.spec, settings)
    except RunFailed as exc:
        return Outcome(cell, "failed", time.perf_counter() - t0, error=str(exc))
    except Exception as exc:  # anything this cell raises (a bad checkpoint, bad input): the next cell runs
        return Outcome(cell, "failed", time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    return Outcome(cell, "done" if result.skipped else "ok", time.perf_counter() - t0, _primary(result.record))


def cell_argv(cell: SweepCell, settings: RunSettings) -> list[str]:
    """``run --cell FILE``: the cell's JSON written under ``<out>/.cells/`` for another process."""
    spec = cell.spec
    assert spec is not None
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    path = write_cell_file(settings.out / ".cells" / f"{digest}.json", spec, settings)
    return ["run", "--cell", str(path)]


def _run_torchrun(cell: SweepCell, settings: RunSettings) -> Outcome:
    t0 = time.perf_counter()
    assert cell.spec is not None
    # --standalone: a free rendezvous port per cell, so concurrent sweeps never collide
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cell.spec.processes)]
    done = subprocess.run([*launcher, "-m", "evalsuite", *cell_argv(cell, settings)], capture_output=True, text=True)
    return _from_process(cell, settings, done.returncode, done.stderr, time.perf_counter() - t0)


def _run_slurm(cells: list[SweepCell], settings: RunSettings, slurm) -> Iterable[Outcome]:
    from .slurm import submit_array

    if not cells:
        return []
    opts, folder, cluster = slurm
    submitted = time.perf_counter()
    jobs = submit_array([cell_argv(cell, settings) for cell in cells], opts, folder, cluster)
    outcomes = []
    for cell, job in zip(cells, jobs):
        t0 = submitted  # seconds since submission (queueing included): jobs run side by side
        try:
            job.results()
            code, error = 0, ""
        except Exception as exc:  # submitit re-raises the job's failure with its log tail
            code, error = 1, str(exc)
        outcomes.append(_from_process(cell, settings, code, error, time.perf_counter() - t0))
    return outcomes


def _from_process(cell: SweepCell, settings: RunSettings, code: int, stderr: str, seconds: float) -> Outcome:
    status, path = state(cell, settings)
    if code == 0 and status == "done":
        return Outcome(cell, "ok", seconds, _primary(RunRecord.load(path)))
    if status == "failed":  # the cell's own failed record says why better than a launcher's last line
        error = (RunRecord.load(path).error or "").strip().splitlines()
        if error:
            return Outcome(cell, "failed", seconds, error=error[0])
    lines = [line for line in stderr.strip().splitlines() if line.strip() and set(line.strip()) - set("=-*")]
    return Outcome(cell, "failed", seconds, error=lines[-1] if lines else f"exit code {code}")


def _primary(record: RunRecord) -> float | None:
    return next((m["value"] for m in record.metrics if m.get("primary")), None)


def dry_run_rows(cells: list[SweepCell], settings: RunSettings) -> list[dict]:
    """Each cell, its state and its estimated cost (seconds, from finished records where known)."""
    records = known_records(settings.out)
    rows = []
    for cell in cells:
        try:
            status, _ = state(cell, settings)
        except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
            status = f"cannot run: {cell.error or exc}"
        rows.append({"cell": cell.name, "state": status, "estimated_s": estimated_seconds(cell.spec, records),
                     "cell_json": json.dumps(cell.spec.to_dict(), sort_keys=True) if cell.spec else None})
    return rows
