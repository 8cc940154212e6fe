"""Provenance helpers: code version, git state and the software/hardware a run used."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch


def git_state() -> tuple[str | None, bool | None]:
    """(sha, dirty) of the checkout evalsuite runs from, or (None, None) for an installed wheel."""
    src = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                                capture_output=True, text=True, check=True).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


def environment(device: torch.device, amp_dtype: torch.dtype | None) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
        "dtype": str(amp_dtype or torch.float32).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """cuda (this process's GPU under torchrun: ``LOCAL_RANK``) if available, else cpu."""
    from .distributed import device

    return device()


def parse_device(name: str | torch.device) -> torch.device:
    """``--device`` checked before any work: a malformed name or an unavailable CUDA device is one line."""
    if isinstance(name, torch.device):
        device = name
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def prepare_headless_gl() -> None:
    """Before the first OpenGL context: EGL unless the user chose another backend, and triton's LLVM
    loaded before Mesa's. Software EGL (llvmpipe) and triton each carry an LLVM; once llvmpipe is
    loaded, a later ``import triton`` (torch._dynamo imports it, e.g. through torchvision.ops)
    segfaults the process."""
    import importlib.util

    os.environ.setdefault("MUJOCO_GL", "egl")
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
