"""`evalsuite sweep`: backbones × tasks × protocols × seeds × weights, one `evalsuite run` per cell.

Executors: ``local`` (each cell in this process, one after the other), ``torchrun`` (each cell under
``torch.distributed.run`` with N processes: DDP training, rank 0 writes) and ``slurm`` (a submitit
job array, one job per cell, with torchrun's environment in every task; ``--cluster local`` runs the
same jobs on this machine). A sweep is resumable because a cell is its identity: a finished cell is
skipped, a failed or killed one runs again (a killed run resumes from its work dir). Two sweeps may
share an output folder: records are written atomically, the same cell twice ends as one good record.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .records import RunRecord, iter_records
from .registry import TASKS

EXECUTORS = ("local", "torchrun", "slurm")


@dataclass(frozen=True)
class RunOptions:
    """What every cell of a sweep shares (the `evalsuite run` options besides the cell's own)."""

    out: Path = Path("results/runs")
    data: str = "real"
    data_root: str | None = None
    mini_size: str = "small"
    mini_seed: int = 0
    params: tuple[str, ...] = ()  # KEY=VALUE, as `-p`
    batch_size: int = 64
    device: str | None = None
    processes: int = 1  # processes per cell (torchrun/Slurm): part of a cell's identity when above 1


@dataclass(frozen=True)
class SweepCell:
    backbone: str
    task: str
    protocol: str | None
    seed: int
    weights: str | None = None

    @property
    def name(self) -> str:
        weights = f" @ {self.weights}" if self.weights else ""
        return f"{self.backbone}{weights} × {self.task}{'/' + self.protocol if self.protocol else ''} · seed {self.seed}"

    def argv(self, options: RunOptions) -> list[str]:
        out = ["run", "-b", self.backbone, "-t", self.task, "--seed", str(self.seed), "--out", str(options.out),
               "--data", options.data, "--mini-size", options.mini_size, "--mini-seed", str(options.mini_seed),
               "--batch-size", str(options.batch_size)]
        out += ["--protocol", self.protocol] if self.protocol else []
        out += ["--weights", self.weights] if self.weights else []
        out += ["--data-root", options.data_root] if options.data_root else []
        out += ["--device", options.device] if options.device else []
        for assignment in options.params:
            out += ["-p", assignment]
        return out


def plan(backbones: Iterable[str], tasks: Iterable[str], protocols: Iterable[str] = (), seeds: int = 1,
         weights: Iterable[str] = (), first_seed: int = 0) -> list[SweepCell]:
    """Every cell, in a stable order. ``protocols`` apply to the tasks that have them; a task that has
    none of them is an error (a typo would otherwise silently drop the task)."""
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
    return [SweepCell(b, t, p, s, w) for b, w, t in itertools.product(backbones, list(weights) or [None], tasks)
            for p in per_task[t] for s in range(first_seed, first_seed + seeds)]


def state(cell: SweepCell, options: RunOptions) -> tuple[str, Path | None]:
    """("done" | "failed" | "todo", the record path): a cell is done when its record is ok."""
    from .records import failed_path
    from .runner import resolve_cell

    resolved = resolve_cell(cell.backbone, cell.task, weights=cell.weights, data=options.data, data_root=options.data_root,
                            mini_size=options.mini_size, mini_seed=options.mini_seed, seed=cell.seed,
                            params=_params(options), protocol=cell.protocol, out_dir=options.out,
                            processes=options.processes)
    if resolved.path.is_file() and RunRecord.load(resolved.path).status == "ok":
        return "done", resolved.path
    if failed_path(resolved.path).is_file():
        return "failed", failed_path(resolved.path)
    return "todo", resolved.path


def _params(options: RunOptions) -> dict:
    from .params import parse_assignments

    return parse_assignments(list(options.params), "-p")


def estimated_seconds(cell: SweepCell, records: list[RunRecord], options: RunOptions | None = None) -> float | None:
    """From finished records of the same backbone, task, protocol and data (real, or the same mini
    world; any seed or weights), or None."""
    options = options or RunOptions()
    protocol = cell.protocol or TASKS.get(cell.task).default_protocol
    world = f"seed{options.mini_seed}-{options.mini_size}" if options.data == "mini" else ""
    times = [r.timings.get("total_s") for r in records
             if r.status == "ok" and r.backbone.get("name") == cell.backbone and r.task.get("name") == cell.task
             and r.task.get("protocol") == protocol and r.data.get("source") == options.data
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


def run_sweep(cells: list[SweepCell], options: RunOptions, executor: str = "local", processes: int = 2,
              slurm=None, on_outcome: Callable[[Outcome], None] = lambda o: None) -> Summary:
    """Run every cell that is not done; a failing cell never stops the sweep (see `Summary.failed`)."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    summary = Summary()
    todo = []
    for cell in cells:
        try:
            status, _ = state(cell, options)
        except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:  # this cell's input is bad: say so at the end
            summary.outcomes.append(Outcome(cell, "failed", error=f"{type(exc).__name__}: {exc}"))
            on_outcome(summary.outcomes[-1])
            continue
        if status == "done":
            summary.outcomes.append(Outcome(cell, "done"))
            on_outcome(summary.outcomes[-1])
        else:
            todo.append(cell)
    if executor == "slurm":
        outcomes = _run_slurm(todo, options, slurm)
    else:
        outcomes = (_run_local(cell, options) if executor == "local" else _run_torchrun(cell, options, processes)
                    for cell in todo)
    for outcome in outcomes:
        summary.outcomes.append(outcome)
        on_outcome(outcome)
    return summary


def _run_local(cell: SweepCell, options: RunOptions) -> Outcome:
    from .runner import RunFailed, run_cell

    t0 = time.perf_counter()
    try:
        result = run_cell(cell.backbone, cell.task, weights=cell.weights, data=options.data, data_root=options.data_root,
                          mini_size=options.mini_size, mini_seed=options.mini_seed, seed=cell.seed, params=_params(options),
                          protocol=cell.protocol, out_dir=options.out, batch_size=options.batch_size, device=options.device)
    except RunFailed as exc:
        return Outcome(cell, "failed", time.perf_counter() - t0, error=str(exc))
    except Exception as exc:  # anything this cell raises (a bad checkpoint, bad input): the next cell runs
        return Outcome(cell, "failed", time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    return Outcome(cell, "done" if result.skipped else "ok", time.perf_counter() - t0, _primary(result.record))


def _run_torchrun(cell: SweepCell, options: RunOptions, processes: int) -> Outcome:
    t0 = time.perf_counter()
    # --standalone: a free rendezvous port per cell, so concurrent sweeps never collide
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    done = subprocess.run([*launcher, "-m", "evalsuite", *cell.argv(options)], capture_output=True, text=True)
    return _from_process(cell, options, done.returncode, done.stderr, time.perf_counter() - t0)


def _run_slurm(cells: list[SweepCell], options: RunOptions, slurm) -> Iterable[Outcome]:
    from .slurm import submit_array

    if not cells:
        return []
    opts, folder, cluster = slurm
    submitted = time.perf_counter()
    jobs = submit_array([cell.argv(options) for cell in cells], opts, folder, cluster)
    outcomes = []
    for cell, job in zip(cells, jobs):
        t0 = submitted  # seconds since submission (queueing included): jobs run side by side
        try:
            job.results()
            code, error = 0, ""
        except Exception as exc:  # submitit re-raises the job's failure with its log tail
            code, error = 1, str(exc)
        outcomes.append(_from_process(cell, options, code, error, time.perf_counter() - t0))
    return outcomes


def _from_process(cell: SweepCell, options: RunOptions, code: int, stderr: str, seconds: float) -> Outcome:
    status, path = state(cell, options)
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


def dry_run_rows(cells: list[SweepCell], options: RunOptions) -> list[dict]:
    """Each cell, its state and its estimated cost (seconds, from finished records where known)."""
    records = known_records(options.out)
    rows = []
    for cell in cells:
        try:
            status, _ = state(cell, options)
        except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
            status = f"cannot run: {exc}"
        estimate = estimated_seconds(cell, records, options)
        rows.append({"cell": cell.name, "state": status, "estimated_s": estimate,
                     "command": "evalsuite " + " ".join(cell.argv(options))})
    return rows
