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
    env["packages"] = package_versions()
    return env


# the libraries whose code computes a number (kernels, initialisations, image decoders, simulators)
SCORE_PACKAGES = ("numpy", "torchvision", "timm", "transformers", "tokenizers", "mmengine", "scikit-learn", "scipy",
                  "pillow", "opencv-python", "mujoco", "metaworld", "gymnasium")


def package_versions() -> dict[str, str]:
    """Installed versions of `SCORE_PACKAGES` (absent ones left out), read from package metadata
    without importing them: what `evalsuite check` compares when a number moved."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in SCORE_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def flat_environment(env: dict | None) -> str:
    """A record's environment as one sorted ``key=value; …`` string (the tidy CSV's column)."""
    if not env:
        return ""
    items = {k: v for k, v in env.items() if k != "packages"} | dict((env.get("packages") or {}).items())
    return "; ".join(f"{k}={items[k]}" for k in sorted(items))


def environment_differences(before: str, after: str) -> list[str]:
    """``key: before → after`` for every entry that differs between two `flat_environment` strings."""
    parse = lambda text: dict(part.split("=", 1) for part in str(text or "").split("; ") if "=" in part)
    a, b = parse(before), parse(after)
    return [f"{k}: {a.get(k, '—')} → {b.get(k, '—')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


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
