"""`evalsuite bench`: what a backbone's forward pass costs, timm ``benchmark.py``-style.

Warm-up steps, then timed steps (CUDA synchronised): images/s, ms/step, peak memory (CUDA max
allocated, or the process's peak RSS on CPU), FLOPs counted by ``torch.utils.flop_counter`` on one
step, achieved TFLOP/s and MFU against the device's peak where it is known (``--peak-tflops``
otherwise). The same loop runs through our feature path (``forward_features`` as the tasks call it)
and through a bare timm ``forward_features`` on the same architecture, and their ratio says what our
wrapper costs. The result is a record: the leaderboard tooling reads it like any other.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) of accelerators we know; fp32 is not tensor-core peak.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}

# Our backbones whose architecture timm ships (same blocks, same token count): the bare baseline.
TIMM_TWINS = {
    "mae-b16": "vit_base_patch16_224.mae", "mae-l16": "vit_large_patch16_224.mae", "mae-h14": "vit_huge_patch14_224.mae",
    "dinov2-s14": "vit_small_patch14_dinov2", "dinov2-b14": "vit_base_patch14_dinov2",
    "dinov2-l14": "vit_large_patch14_dinov2", "dinov2-g14": "vit_giant_patch14_dinov2",
    "dinov2-s14-reg": "vit_small_patch14_reg4_dinov2", "dinov2-b14-reg": "vit_base_patch14_reg4_dinov2",
    "dinov2-l14-reg": "vit_large_patch14_reg4_dinov2", "dinov2-g14-reg": "vit_giant_patch14_reg4_dinov2",
}


@dataclass
class BenchResult:
    path: str  # "evalsuite" (our forward_features) or "timm" (a bare timm forward_features loop)
    model: str
    images_per_s: float
    ms_per_step: float
    peak_memory_mb: float  # CUDA: peak allocated during the timed path; CPU: the process's peak RSS so far
    gflops_per_image: float
    achieved_tflops: float
    mfu: float | None  # share of the device's peak, None where the peak is unknown


def timm_twin(name: str) -> str | None:
    """The timm architecture of backbone ``name``: itself for ``timm:<model>``, else `TIMM_TWINS`."""
    return name.removeprefix("timm:") if name.startswith("timm:") else TIMM_TWINS.get(name)


def device_peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def count_flops(step: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux: the process's peak


def time_loop(step: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step after ``warmup`` untimed steps (CUDA synchronised around the timed ones)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def measure(path: str, model_name: str, forward: Callable[[torch.Tensor], object], images: torch.Tensor,
            device: torch.device, precision: str, warmup: int, steps: int, peak_tflops: float | None) -> BenchResult:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return forward(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = count_flops(step)
    seconds = time_loop(step, device, warmup, steps)
    batch = images.shape[0]
    achieved = flops / seconds / 1e12
    return BenchResult(path, model_name, batch / seconds, 1e3 * seconds, _peak_memory_mb(device), flops / batch / 1e9,
                       achieved, achieved / peak_tflops if peak_tflops else None)


def bench(backbone_name: str, *, batch_size: int = 32, image_size: int | None = None, precision: str = "fp32",
          compile: bool = False, channels_last: bool = False, device: torch.device | None = None, warmup: int = 5,
          steps: int = 20, peak_tflops: float | None = None, weights: str = "random") -> tuple[list[BenchResult], dict]:
    """Our feature path and, where timm has the architecture, the bare timm loop; plus the settings."""
    import timm

    from .checkpoints import create_backbone

    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = create_backbone(backbone_name, weights).to(device).eval()
    size = image_size or backbone.meta.image_size[0]
    images = torch.randn(batch_size, 3, size, size, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.contiguous(memory_format=memory_format)
    peak = peak_tflops or device_peak_tflops(device, precision)

    def prepare(model: torch.nn.Module) -> Callable[[torch.Tensor], object]:
        """The function timed: ``forward_features`` (compiled itself — compiling the module would only
        compile ``forward``)."""
        model = model.to(device, memory_format=memory_format).eval()
        return torch.compile(model.forward_features) if compile else model.forward_features

    results = [measure("evalsuite", backbone_name, prepare(backbone), images, device, precision, warmup, steps, peak)]
    twin = timm_twin(backbone_name)
    bare = _timm_model(timm, twin) if twin is not None else None
    if bare is not None:
        backbone.to("cpu")  # its weights out of the twin's peak memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            results.append(measure("timm", twin, prepare(bare), images, device, precision, warmup, steps, peak))
        except (AssertionError, RuntimeError, TypeError):  # the twin refuses this input size: no ratio
            twin = None
    settings = {"batch_size": batch_size, "image_size": size, "precision": precision, "compile": compile,
                "channels_last": channels_last, "device": str(device), "threads": torch.get_num_threads(),
                "warmup": warmup, "steps": steps, "peak_tflops": peak, "timm_twin": twin}
    return results, settings


def _timm_model(timm, name: str):
    """The bare timm model, at any input size where the family allows it; None if timm cannot build it."""
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
    except TypeError:
        try:
            return timm.create_model(name, pretrained=False, num_classes=0)
        except Exception:
            return None


def ratio(results: list[BenchResult]) -> float | None:
    """Our images/s over the bare timm loop's (1.0 = no overhead), where both ran."""
    by_path = {r.path: r for r in results}
    if "timm" not in by_path:
        return None
    return by_path["evalsuite"].images_per_s / by_path["timm"].images_per_s


def as_record(backbone_name: str, results: list[BenchResult], settings: dict):
    """A record (task ``bench``, label ``bench/<precision>/bs<N>/<size>px``): throughput as metrics."""
    import uuid
    from datetime import datetime, timezone

    from . import __version__
    from .environment import environment, git_state
    from .records import RunRecord

    ours = next(r for r in results if r.path == "evalsuite")
    device_kind = torch.device(settings["device"]).type
    options = "".join(("+compile" if settings["compile"] else "", "+channels_last" if settings["channels_last"] else ""))
    label = f"bench/{device_kind}/{settings['precision']}{options}/bs{settings['batch_size']}/{settings['image_size']}px"
    metrics = [{"name": "images_per_s", "value": ours.images_per_s, "split": "synthetic", "higher_is_better": True,
                "primary": True, "std": None},
               {"name": "ms_per_step", "value": ours.ms_per_step, "split": "synthetic", "higher_is_better": False,
                "primary": False, "std": None},
               {"name": "peak_memory_mb", "value": ours.peak_memory_mb, "split": "synthetic", "higher_is_better": False,
                "primary": False, "std": None},
               {"name": "gflops_per_image", "value": ours.gflops_per_image, "split": "synthetic", "higher_is_better": False,
                "primary": False, "std": None}]
    if ratio(results) is not None:
        metrics.append({"name": "ratio_to_timm", "value": ratio(results), "split": "synthetic", "higher_is_better": True,
                        "primary": False, "std": None})
    sha, dirty = git_state()
    now = datetime.now(timezone.utc)
    run_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    device = torch.device(settings["device"])
    return RunRecord(run_id=run_id, cell_key=run_id, status="ok", started_at=now.isoformat(), finished_at=now.isoformat(),
                     evalsuite_version=__version__, git_sha=sha, git_dirty=dirty,
                     task={"name": "bench", "label": label, "version": 1, "tolerance": 0.0, "params": settings,
                           "identity": dict(settings), "variant": {}},
                     data={"source": "bench", "world": "", "dataset": "synthetic", "identity": "synthetic-images"},
                     backbone={"name": backbone_name, "label": backbone_name, "weights": "random"}, seed=0,
                     metrics=metrics, selected={"paths": [asdict(r) for r in results]},
                     environment=environment(device, None), settings=settings)
