"""Training heads and fine-tuning runs on mmengine's Runner (AMP, DDP under torchrun, checkpoint/resume).

mmengine 0.10 resumes with ``torch.load`` which, on torch ≥ 2.6, unpickles with ``weights_only=True``.
Its checkpoints hold a message hub of logging histories whose pickles call ``builtins.getattr``;
allowlisting that would admit a general code-execution gadget. So `PlainCheckpointHook` reduces the
hub to plain values before a checkpoint is written (logging history is not needed to resume), and
`allow_mmengine_checkpoints` allowlists the few harmless classes that remain (numpy arrays/dtypes
in scheduler and runtime state).
"""

from __future__ import annotations

import logging
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import EvalsuiteWarning, distributed
from .sampling import GlobalBatchSampler


def allow_mmengine_checkpoints() -> None:
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_)]
    torch.serialization.add_safe_globals([np.ndarray, np.dtype, np._core.multiarray._reconstruct, *dtype_classes])


def discard_unreadable_checkpoint(work_dir: Path) -> None:
    """A killed run can leave a truncated checkpoint behind; resuming from it would fail forever, so
    it is discarded (with a warning) and the run starts from the beginning."""
    pointer = work_dir / "last_checkpoint"
    if not pointer.is_file():
        return
    checkpoint = Path(pointer.read_text().strip())
    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        warnings.warn(f"discarded the unreadable checkpoint {checkpoint} ({type(exc).__name__}): training restarts",
                      EvalsuiteWarning, stacklevel=2)
        shutil.rmtree(work_dir, ignore_errors=True)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return None


def plain_checkpoint_hook():
    from mmengine.hooks import Hook

    class PlainCheckpointHook(Hook):
        priority = "VERY_LOW"

        def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
            hub = checkpoint.get("message_hub")
            if isinstance(hub, dict):
                info = {k: _plain(v) for k, v in hub.get("runtime_info", {}).items()}
                checkpoint["message_hub"] = {"log_scalars": {}, "resumed_keys": dict(hub.get("resumed_keys", {})),
                                             "runtime_info": {k: v for k, v in info.items() if v is not None}}

    return PlainCheckpointHook()


def iterations(epochs: int, steps_per_epoch: int, samples: int, batch: int) -> int:
    """``epochs`` × ``steps_per_epoch`` optimiser steps, refused below 2 (a warm-up/decay schedule
    needs two) rather than raised silently: the record's ``epochs`` is what ran."""
    from .params import ParamError

    iters = epochs * steps_per_epoch
    if iters < 2:
        raise ParamError(f"epochs={epochs} gives {iters} optimiser step(s) ({samples} training samples, batch {batch}): "
                         "at least 2 are needed; raise epochs or lower batch_size")
    return iters


@dataclass(frozen=True)
class Schedule:
    """The learning-rate factor of iteration i (0-based) of ``iters``, as closed forms.

    ``poly``/``cosine`` warm up linearly from ``warmup_ratio`` over ``warmup_iters``, then decay over
    the *remaining* iterations (Pixio's dense heads: poly 0.9; MAE's fine-tuning: cosine to
    ``min_ratio``). ``mmcv-poly``/``mmcv-cosine`` are mmcv 1.x's LR hooks, which DINOv2's configs use:
    the decay runs over the *whole* run and the warm-up factor 1 − (1 − i/W)(1 − r) multiplies it (so
    the warm-up peaks below the base lr). ``step`` multiplies by ``gamma`` at each of ``milestones``
    (fractions of the whole run, e.g. Pixel-BERT's epochs 12 and 16 of 18), after a linear warm-up.
    """

    kind: str
    iters: int
    warmup_iters: int = 0
    warmup_ratio: float = 1e-3
    power: float = 0.9
    min_ratio: float = 0.0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("poly", "cosine", "mmcv-poly", "mmcv-cosine", "step"):
            raise ValueError(f"unknown schedule {self.kind!r}")

    def decay(self, progress: float) -> float:
        if self.kind == "step":
            return self.gamma ** sum(progress >= m for m in self.milestones)
        if self.kind.endswith("poly"):
            return self.min_ratio + (1 - self.min_ratio) * (1 - progress) ** self.power
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def warm(self, i: int) -> float:
        return 1 - (1 - i / self.warmup_iters) * (1 - self.warmup_ratio) if i < self.warmup_iters else 1.0

    def __call__(self, i: int) -> float:
        if self.kind.startswith("mmcv"):
            return self.decay(i / self.iters) * self.warm(i)
        if self.kind == "step":
            return self.warm(i) if i < self.warmup_iters else self.decay(i / self.iters)
        if i < self.warmup_iters:
            return self.warm(i)
        return self.decay((i - self.warmup_iters) / max(1, self.iters - self.warmup_iters))


def one_cycle_momentum(iters: int, low: float = 0.85, high: float = 0.95, pct_start: float = 0.3):
    """mmcv's OneCycleMomentumUpdaterHook (two phases, cosine): β1 from ``high`` to ``low`` until
    iteration pct_start·iters − 1, then back to ``high`` at the last iteration (DINOv2's depth config)."""
    turn = float(pct_start * iters) - 1

    def beta1(i: int) -> float:
        if i <= turn:
            return low + (high - low) * 0.5 * (1 + math.cos(math.pi * i / turn))
        return high - (high - low) * 0.5 * (1 + math.cos(math.pi * (i - turn) / (iters - 1 - turn)))

    return beta1


def progress_hook(description: str, iters: int):
    """Reports each iteration (and its loss) on the current progress: a bar on a terminal, a line per
    stage in logs (`evalsuite.features`)."""
    from mmengine.hooks import Hook

    from .features import stage

    class ProgressHook(Hook):
        priority = "LOWEST"

        def before_train(self, runner) -> None:
            self._stage = stage(description, iters)
            self._advance = self._stage.__enter__()
            self._advance(runner.iter)  # a resumed run starts where it was

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            loss = (outputs or {}).get("loss")
            if isinstance(loss, torch.Tensor):
                loss = loss.detach().item()
            self._advance(1, f"{description} loss {loss:.4f}" if loss is not None else None)

        def after_train(self, runner) -> None:
            self._stage.__exit__(None, None, None)

    return ProgressHook()


def schedule_hook(schedule: Schedule, beta1=None):
    """An mmengine hook that sets every group's lr (its ``base_lr`` × the schedule) and, optionally,
    AdamW's β1 before each iteration, from the iteration number alone: a resumed run follows the
    same curve."""
    from mmengine.hooks import Hook

    class ScheduleHook(Hook):
        priority = "VERY_HIGH"

        def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
            factor = schedule(runner.iter)
            for group in runner.optim_wrapper.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
                if beta1 is not None:
                    group["betas"] = (beta1(runner.iter), group["betas"][1])

    return ScheduleHook()


def train(model, dataset: Dataset, *, collate: Callable, batch_size: int, iters: int, lr: float, weight_decay: float,
          schedule: Schedule, work_dir: Path, seed: int, resume: bool = False, checkpoint_interval: int = 0,
          amp_dtype: torch.dtype | None = None, grad_clip: float | None = None, betas: tuple[float, float] = (0.9, 0.999),
          beta1_schedule=None, param_groups: list[dict] | None = None, hooks: Sequence = (), description: str = "training"):
    """AdamW with the lr of every iteration from ``schedule`` (and AdamW's β1 from ``beta1_schedule``),
    gradient norms clipped to ``grad_clip`` when given, iteration-based, on a deterministic
    global-batch order.

    ``param_groups`` (e.g. `evalsuite.finetune.param_groups`: per-group lr and weight decay) default
    to all trainable parameters at ``lr``; the schedule scales every group's own lr. Checkpoints go to
    ``work_dir`` every ``checkpoint_interval`` iterations (and at the end); with ``resume`` the latest
    one is loaded and its iterations are skipped in the data order, so a killed run ends in the same
    state as an uninterrupted one.
    """
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    from mmengine.runner import Runner

    allow_mmengine_checkpoints()
    if resume:
        discard_unreadable_checkpoint(Path(work_dir))
    world, rank = distributed.world_size(), distributed.rank()
    sampler = GlobalBatchSampler(len(dataset), batch_size, iters, 0, seed, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    if world > 1:
        model = distributed.wrap_ddp(model, mmengine=True)
    if param_groups is None:
        param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    clip = {"clip_grad": dict(max_norm=grad_clip, norm_type=2)} if grad_clip else {}
    runner = Runner(
        model=model, work_dir=str(work_dir), train_dataloader=loader,
        optim_wrapper=(AmpOptimWrapper(optimizer=optimizer, dtype=amp_dtype, **clip) if amp_dtype
                       else OptimWrapper(optimizer=optimizer, **clip)),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=checkpoint_interval or iters, by_epoch=False,
                                           max_keep_ckpts=1),
                           logger=dict(type="LoggerHook", interval=max(1, iters // 10)),
                           param_scheduler=None,  # the schedule hook sets every iteration's lr
                           sampler_seed=None),  # GlobalBatchSampler derives its order from the seed itself
        custom_hooks=[schedule_hook(schedule, beta1_schedule), plain_checkpoint_hook(), progress_hook(description, iters), *hooks],
        randomness=dict(seed=seed),
        resume=resume and (Path(work_dir) / "last_checkpoint").is_file(), launcher="pytorch" if world > 1 else "none",
        log_level="ERROR", visualizer=dict(type="Visualizer", vis_backends=[]),
    )
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    runner.train()
    return getattr(runner.model, "module", runner.model)  # unwrapped from DDP under torchrun
