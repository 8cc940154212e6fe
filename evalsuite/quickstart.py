"""The main job on the mini world: pretrain tiny Pixio briefly with its own objective, then evaluate
it on every task that has mini data next to its randomly initialised twin, and state what the
pretraining bought as paired deltas with 95 % intervals.

Pretrained checkpoints are cached under ``$EVALSUITE_MINI_CACHE/../pretrained/<backbone>-<key>/``
(key = hash of the pretraining config, the family objective's defaults, the mini data version and the
code version), so a second quickstart only re-reads records. The budget keeps the whole job under 10
minutes cold on 2 cores (measured: docs/quickstart in the README).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from . import __version__
from .cell import CellSpec, RunSettings
from .leaderboard import CELL, compare
from .mini import cache_root, mini_dir
from .pretrain import PretrainConfig, pretrain
from .registry import BACKBONES, TASKS
from .runner import CellResult, run_cell

# 400 steps at 64 px (≈1.8 min on 2 CPU cores): a quarter of the tokens buys ~6× the steps of 128-px
# pretraining in the same time; evaluation runs at the backbone's 128 px. One family fits the budget with
# all seven task families (MAE's twin pair would add ~4 min): `evalsuite pretrain -b mae-tiny` is one command.
PRETRAIN = {
    "pixio-tiny": PretrainConfig(backbone="pixio-tiny", data="mini", steps=400, batch_size=32, blr=5e-3, image_size=64),
}
# Each pretrained backbone next to its randomly initialised twin; a random backbone without a
# pretrained twin would only add a row that reads like a result.
RANDOM_TWINS = tuple(PRETRAIN)
PRETRAINED_LABEL = "mini-pretrained"


def pretrained_checkpoint(cfg: PretrainConfig, progress=None) -> Path:
    objective_defaults = getattr(BACKBONES.get(cfg.backbone).pretrain, "keywords", {})  # e.g. the tiny decoder
    identity = json.dumps({**asdict(cfg), "out": None, "data_dir": mini_dir("pretrain-mini", seed=cfg.mini_seed).name,
                           "objective_defaults": objective_defaults, "evalsuite": __version__}, sort_keys=True)
    out = cache_root().parent / "pretrained" / f"{cfg.backbone}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    checkpoint = out / "checkpoint.pth"
    if not checkpoint.is_file():  # written once, atomically, at the end of the run
        pretrain(replace(cfg, out=str(out)), progress)
    return checkpoint


def variants(task: str) -> list[dict]:
    """The task's ``quickstart`` variants (protocol + parameters), or its default protocol."""
    return [dict(v) for v in TASKS.get(task).quickstart] or [{}]


def quickstart_tasks() -> list[str]:
    """Every registered task with a mini world: the quickstart runs them all."""
    return [task for task in TASKS.names() if TASKS.get(task).mini_dataset]


def run(out: Path, force: bool = False, progress=None, run_one: Callable[..., CellResult] | None = None,
        mini_seed: int = 0, skipped: Callable[[str, str], None] | None = None) -> Iterator[CellResult]:
    """Yield every quickstart cell's result (pretraining first, on first use).

    ``mini_seed`` replays the whole job on another generated world (pretraining data included):
    the check that a conclusion is not an accident of one world's scenes. A task whose optional extra
    is not installed is passed to ``skipped(task, reason)`` and left out."""
    run_one = run_one or run_cell
    settings = RunSettings(out=out, force=force)
    weights = [(name, "random", None) for name in RANDOM_TWINS]
    weights += [(name, str(pretrained_checkpoint(replace(cfg, mini_seed=mini_seed), progress)), PRETRAINED_LABEL)
                for name, cfg in PRETRAIN.items()]
    for task in quickstart_tasks():
        if (reason := TASKS.get(task).missing_extra()) is not None:
            if skipped is not None:
                skipped(task, reason)
            continue
        for params in variants(task):
            for backbone, w, label in weights:
                spec = CellSpec.build(backbone, task, weights=w, weights_label=label, data="mini", mini_seed=mini_seed,
                                      params=params)
                yield run_one(spec, settings, progress)


def twin_deltas(frame: pd.DataFrame, samples: dict) -> pd.DataFrame:
    """Each pretrained backbone against its random twin, per task and shown metric: the delta
    (pretrained − random) with its paired-bootstrap 95 % interval, and a verdict that claims a gain or
    a loss only where the interval excludes 0 ("no interval" where a task keeps no per-sample scores)."""
    rows = []
    for name in RANDOM_TWINS:
        twin = f"{name}@{PRETRAINED_LABEL}"
        random_side = frame[frame["backbone"] == name]
        pretrained_side = frame[frame["backbone"] == twin]
        if random_side.empty or pretrained_side.empty:
            continue
        keep = lambda side: {k: v for k, v in samples.items() if k[CELL.index("backbone")] == side}
        table = compare(random_side, pretrained_side, keep(name), keep(twin))
        shown = frame.drop_duplicates(["task", "metric"]).set_index(["task", "metric"])
        for _, row in table.iterrows():
            if not bool(shown.loc[(row["task"], row["metric"]), "shown"] if "shown" in shown else True):
                continue
            rows.append({"backbone": name, "task": row["task"], "metric": row["metric"], "random": row["value_a"],
                         "pretrained": row["value_b"], "delta": row["delta"], "ci95_low": row.get("ci95_low"),
                         "ci95_high": row.get("ci95_high"), "verdict": _verdict(row)})
    return pd.DataFrame(rows)


def _verdict(row: pd.Series) -> str:
    low, high = row.get("ci95_low"), row.get("ci95_high")
    if low is None or pd.isna(low):
        return "no interval"
    if low > 0 or high < 0:
        gain = (low > 0) == bool(row["higher_is_better"])
        return "pretrained better" if gain else "pretrained worse"
    return "no clear difference"
