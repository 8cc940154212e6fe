"""Processes under torchrun (or `evalsuite slurm`, which exports torchrun's variables): ranks from
the environment, process-group initialisation (NCCL on GPUs, gloo on CPUs) and DDP wrapping.

Everything that needs to know its rank asks here, so a 1-process run and an N-process run differ
only in what this module returns.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where work starts: naming a cell (or refusing one) needs no torch
    import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 writes records and checkpoints; the other ranks compute the same thing alongside."""
    return rank() == 0


def device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    import torch

    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def init() -> tuple[int, int]:
    """(rank, world size), initialising the default process group once when there are several
    processes. Done here, not by mmengine, because mmengine 0.10 calls ``torch.cuda.set_device``
    unconditionally, which fails on CPU-only machines (CI runs gloo)."""
    import torch
    import torch.distributed as dist

    world = world_size()
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def wrap_ddp(model: torch.nn.Module, mmengine: bool = False) -> torch.nn.Module:
    """``model`` on this process's device inside DistributedDataParallel (mmengine's wrapper for
    models trained by its Runner)."""
    import torch

    init()
    dev = device()
    ids = [local_rank()] if dev.type == "cuda" else None
    if mmengine:
        from mmengine.model import MMDistributedDataParallel

        return MMDistributedDataParallel(module=model.to(dev), device_ids=ids, broadcast_buffers=False)
    return torch.nn.parallel.DistributedDataParallel(model.to(dev), device_ids=ids)


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (itself with one process)."""
    import torch.distributed as dist

    if world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world_size()


def barrier() -> None:
    import torch.distributed as dist

    if world_size() > 1 and dist.is_initialized():
        dist.barrier()
