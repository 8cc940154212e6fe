"""The main job on the mini world: pretrain the tiny Pixio and MAE briefly, then evaluate them on every
task that has mini data, next to their randomly initialised twins.

Pretrained checkpoints are cached under ``$EVALSUITE_MINI_CACHE/../pretrained/<backbone>-<key>/``
(key = hash of the pretraining config, the family objective's defaults, the mini data version and the
code version), so a second quickstart only re-reads records. The budget keeps the whole job under 10
minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator

from . import __version__
from .mini import cache_root, mini_dir
from .pretrain import PretrainConfig, pretrain
from .registry import BACKBONES, TASKS
from .runner import CellResult, run_cell

# 400 steps at 64 px (≈2.5 min each on 2 CPU cores): a quarter of the tokens buys ~6× the steps of
# 128-px pretraining in the same time; evaluation runs at the backbones' 128 px.
PRETRAIN = {
    "pixio-tiny": PretrainConfig(backbone="pixio-tiny", data="mini", steps=400, batch_size=32, blr=5e-3, image_size=64),
    "mae-tiny": PretrainConfig(backbone="mae-tiny", data="mini", steps=400, batch_size=32, blr=5e-3, image_size=64),
}
# Each pretrained backbone next to its randomly initialised twin; a random backbone without a
# pretrained twin (dino-tiny) would only add a row that reads like a result.
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


def run(out: Path, force: bool = False, progress=None, run_one: Callable[..., CellResult] | None = None,
        mini_seed: int = 0) -> Iterator[CellResult]:
    """Yield every quickstart cell's result (pretraining first, on first use).

    ``mini_seed`` replays the whole job on another generated world (pretraining data included):
    the check that a conclusion is not an accident of one world's scenes."""
    run_one = run_one or run_cell
    weights = [(name, "random", None) for name in RANDOM_TWINS]
    weights += [(name, str(pretrained_checkpoint(replace(cfg, mini_seed=mini_seed), progress)), PRETRAINED_LABEL)
                for name, cfg in PRETRAIN.items()]
    for task in TASKS.names():
        if not TASKS.get(task).mini_dataset:
            continue
        for params in variants(task):
            for backbone, w, label in weights:
                yield run_one(backbone, task, weights=w, weights_label=label, data="mini", mini_seed=mini_seed,
                              params=params, out_dir=out, force=force, progress=progress)
