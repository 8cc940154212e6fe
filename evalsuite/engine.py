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
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .sampling import GlobalBatchSampler


def allow_mmengine_checkpoints() -> None:
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_)]
    torch.serialization.add_safe_globals([np.ndarray, np.dtype, np._core.multiarray._reconstruct, *dtype_classes])


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


def train(model, dataset: Dataset, *, collate: Callable, batch_size: int, iters: int, lr: float, weight_decay: float,
          warmup_iters: int, work_dir: Path, seed: int, resume: bool = False, checkpoint_interval: int = 0,
          amp_dtype: torch.dtype | None = None, poly_power: float = 0.9, schedule: str = "poly", min_lr_ratio: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.999), param_groups: list[dict] | None = None, hooks: Sequence = ()):
    """AdamW, linear warm-up then poly (dense heads) or cosine (fine-tuning) decay, iteration-based,
    on a deterministic global-batch order.

    ``param_groups`` (e.g. `evalsuite.finetune.param_groups`: per-group lr and weight decay) default
    to all trainable parameters at ``lr``; schedules scale every group's own lr, down to
    ``min_lr_ratio`` of it. Checkpoints go to ``work_dir`` every ``checkpoint_interval`` iterations (and
    at the end); with ``resume`` the latest one is loaded and its iterations are skipped in the data
    order, so a killed run ends in the same state as an uninterrupted one.
    """
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    from mmengine.runner import Runner

    allow_mmengine_checkpoints()
    world, rank = distributed.world_size(), distributed.rank()
    sampler = GlobalBatchSampler(len(dataset), batch_size, iters, 0, seed, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    warmup_iters = max(1, min(warmup_iters, iters - 1))
    if world > 1:
        model = distributed.wrap_ddp(model, mmengine=True)
    if param_groups is None:
        param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    if schedule == "poly":
        decay = dict(type="PolyLR", power=poly_power, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=iters)
    elif schedule == "cosine":
        decay = dict(type="CosineAnnealingLR", T_max=iters - warmup_iters, eta_min_ratio=min_lr_ratio, by_epoch=False,
                     begin=warmup_iters, end=iters)
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    runner = Runner(
        model=model, work_dir=str(work_dir), train_dataloader=loader,
        optim_wrapper=AmpOptimWrapper(optimizer=optimizer, dtype=amp_dtype) if amp_dtype else OptimWrapper(optimizer=optimizer),
        param_scheduler=[dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters), decay],
        train_cfg=dict(by_epoch=False, max_iters=iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=checkpoint_interval or iters, by_epoch=False,
                                           max_keep_ckpts=1),
                           logger=dict(type="LoggerHook", interval=max(1, iters // 10)),
                           sampler_seed=None),  # GlobalBatchSampler derives its order from the seed itself
        custom_hooks=[plain_checkpoint_hook(), *hooks], randomness=dict(seed=seed),
        resume=resume and (Path(work_dir) / "last_checkpoint").is_file(), launcher="pytorch" if world > 1 else "none",
        log_level="ERROR", visualizer=dict(type="Visualizer", vis_backends=[]),
    )
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    runner.train()
    return getattr(runner.model, "module", runner.model)  # unwrapped from DDP under torchrun
