"""Pretraining loop shared by every family's objective (plain torch; DDP under torchrun).

Reproducibility is by construction, not by RNG bookkeeping: the sample order of epoch e, the
crop of sample i in epoch e and the masking noise of step s are drawn from generators seeded by
(seed, e), (seed, e, i) and (seed, s). Each rank takes every world-th sample of the *global* batch
and the matching rows of the step's noise, so an N-process run takes the same steps as a
1-process run with the same global batch, and a resumed run continues exactly where it stopped.

An objective is an ``nn.Module`` built by the backbone's ``BackboneSpec.pretrain(encoder)`` with
``encoder`` (the network that is exported), ``augment(image, generator)`` (one sample's views),
``noise_shape(batch, grid)`` (its per-step random numbers, e.g. masks) and ``forward(views,
noise)`` returning ``{"loss": …}``; optionally ``after_step(step, total)`` (EMA teachers),
``uses_captions`` (image–caption pairs) and ``prepare(dataset, seed)`` (e.g. fit a tokenizer, build a text model).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import __version__, distributed
from .checkpoints import BackboneSpec, create_backbone
from .data import DataNotFoundError, read_image, within
from .fileio import atomic_save, atomic_write_text
from .finetune import param_groups, set_drop_path
from .params import keyword_overrides
from .registry import BACKBONES
from .sampling import GlobalBatchSampler, seeded

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass
class PretrainConfig:
    backbone: str
    data: str = "mini"  # "mini" or a folder of images
    mini_seed: int = 0  # which generated world's pretrain-mini, with data="mini"
    out: str = "results/pretrain"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 64  # global, over all ranks
    blr: float = 1.5e-4
    warmup_fraction: float = 0.05
    weight_decay: float = 0.05
    drop_path: float = 0.0
    seed: int = 0
    scores: str | None = None  # soft self-curation: keep an image with probability = its score
    weights: str | None = None  # continue pretraining from these encoder weights
    objective: dict = field(default_factory=dict)  # overrides of the family objective (decoder_depth…)
    image_size: int | None = None  # pretraining resolution (default: the backbone's); a multiple of the patch
    num_workers: int = 0
    save_every: int = 0  # steps between checkpoints; 0 = at the end only
    log_every: int = 10


def crop_resize(image: Image.Image, gen: torch.Generator, size: tuple[int, int], scale=(0.2, 1.0),
                flip: bool = False) -> Image.Image:
    """RandomResizedCrop (bicubic) and an optional horizontal flip, both drawn from ``gen``."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    top, left, h, w = sample_crop(image.width, image.height, gen, scale)
    image = TF.resized_crop(image, top, left, h, w, list(size), interpolation=InterpolationMode.BICUBIC)
    if flip and torch.rand(1, generator=gen).item() < 0.5:
        image = TF.hflip(image)
    return image


def to_normalised_tensor(image: Image.Image, mean, std) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    return TF.normalize(TF.to_tensor(image), mean, std)


def sample_crop(width: int, height: int, gen: torch.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): area share in ``scale``, log-uniform aspect, 10 tries."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    side = min(width, height)  # fallback: the central square crop
    return (height - side) // 2, (width - side) // 2, side, side


class PretrainImages(Dataset):
    """Images of a folder (or the pairs of its ``captions.jsonl``); item (index, epoch) → the objective's
    views of that image, deterministic per (seed, epoch, index)."""

    def __init__(self, root: Path, augment, seed: int, captions: bool = False):
        root = Path(root)
        if captions:
            listing = root / "captions.jsonl"
            if not listing.is_file():
                raise DataNotFoundError(f"image–caption pretraining needs {listing} (lines of {{\"image\": …, \"caption\": …}})")
            pairs = [json.loads(line) for line in listing.read_text().splitlines() if line.strip()]
            self.files, self.captions = [within(root, p["image"], listing) for p in pairs], [p["caption"] for p in pairs]
        else:
            self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.captions = None
        if not self.files:
            raise DataNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
        self.root, self.augment, self.seed = root, augment, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        views = self.augment(read_image(self.files[index]), seeded(self.seed, epoch, index))
        return (views, self.captions[index]) if self.captions is not None else views


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


# what the data order and the learning-rate schedule are a function of: a resumed run must keep them
RESUME_FIELDS = ("backbone", "data", "mini_seed", "steps", "epochs", "batch_size", "blr", "warmup_fraction", "weight_decay",
                 "seed", "scores", "objective", "image_size", "drop_path")


def check_resumable(path: Path, saved: dict, cfg: PretrainConfig) -> None:
    """Refuse to resume under other settings: a new ``--steps`` would silently re-draw the cosine
    schedule (the learning rate jumps back up) and a new batch would re-deal the data."""
    changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} → {getattr(cfg, k)!r}" for k in RESUME_FIELDS
               if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        raise ValueError(f"{path} was trained with other settings ({'; '.join(changed)}): --resume continues the same "
                         "run (its schedule, data order and RNG); give the checkpoint's settings, or start a new --out "
                         "with --weights to begin from it")


def load_curation_scores(path: str | Path, files: list[Path], root: Path) -> np.ndarray:
    scores = json.loads(Path(path).read_text())["scores"]
    missing = [str(f.relative_to(root)) for f in files if str(f.relative_to(root)) not in scores]
    if missing:
        raise ValueError(f"{path} has no score for {len(missing)} images, e.g. {missing[0]}")
    values = np.array([scores[str(f.relative_to(root))] for f in files], dtype=np.float64)
    if not (values > 0).any():
        raise ValueError(f"{path} gives every one of the {len(files)} images score 0: it selects nothing to pretrain on "
                         "(re-run `evalsuite curate` with a lower --min-side or --min-entropy)")
    return values


def pretrain(cfg: PretrainConfig, progress: Any = None) -> Path:
    """Run (or resume) pretraining; returns the checkpoint path, loadable with ``--weights``."""
    objective_options = check_objective(cfg.backbone, cfg.objective)
    spec = BACKBONES.get(cfg.backbone)
    rank, world = distributed.init()
    device = distributed.device()
    torch.manual_seed(cfg.seed)
    encoder = create_backbone(cfg.backbone, cfg.weights or "random")
    if cfg.drop_path:
        set_drop_path(encoder, cfg.drop_path)
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else encoder.meta.image_size
    objective = spec.pretrain(encoder, image_size=size, **objective_options)
    meta = encoder.meta
    if cfg.data == "mini":
        from .mini import ensure_mini

        root = ensure_mini("pretrain-mini", seed=cfg.mini_seed)
    else:
        root = Path(cfg.data)
        if not root.is_dir():
            raise DataNotFoundError(f"pretraining data not found at {root}: pass a folder of images or --data mini")
    dataset = PretrainImages(root, objective.augment, cfg.seed, captions=getattr(objective, "uses_captions", False))
    if hasattr(objective, "prepare"):
        objective.prepare(dataset, cfg.seed)
    objective.to(device)
    keep = load_curation_scores(cfg.scores, dataset.files, root) if cfg.scores else None
    probe = GlobalBatchSampler(len(dataset), cfg.batch_size, 1, 0, cfg.seed, 0, 1, keep)
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * probe.steps_per_epoch(0)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pth"
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(objective, lr=0.0, weight_decay=cfg.weight_decay)]
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95))
    start = 0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        check_resumable(ckpt_path, json.loads(state["config"]), cfg)
        objective.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        torch.set_rng_state(state["rng"])
    model = torch.nn.parallel.DistributedDataParallel(objective) if world > 1 else objective
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, total, start, cfg.seed, rank, world, keep)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers)
    peak = cfg.blr * cfg.batch_size / 256
    warmup = max(1, int(cfg.warmup_fraction * total))
    grid = (size[0] // meta.patch_size, size[1] // meta.patch_size)
    task = progress.add_task(f"pretraining {cfg.backbone}", total=total, completed=start) if progress and rank == 0 else None
    log = []
    model.train()
    after_step = getattr(objective, "after_step", None)
    for step, views in enumerate(loader, start=start):
        lr = lr_at(step, total, warmup, peak)
        for group in optimizer.param_groups:
            group["lr"] = lr
        noise = torch.rand(objective.noise_shape(cfg.batch_size, grid), generator=seeded(cfg.seed, step, 2))[rank::world]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = model(_to(views, device), noise.to(device))
        loss = outputs["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}: pretraining failed")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(step, total)
        logged = loss.detach().float()
        logged = distributed.mean_over_processes(logged)  # the global-batch mean, comparable to a 1-process run
        parts = {k: float(v) for k, v in outputs.items() if k != "loss" and v.numel() == 1}
        log.append({"step": step, "loss": logged.item(), "lr": lr, **parts})
        if task is not None:
            progress.update(task, advance=1, description=f"pretraining {cfg.backbone} loss {logged.item():.4f}")
        done = step + 1
        if cfg.save_every and done % cfg.save_every == 0 and done < total:
            _save(ckpt_path, objective, optimizer, done, cfg, rank, log)
    if task is not None:
        progress.remove_task(task)  # its line (the final loss) ends the stage off a terminal
    _save(ckpt_path, objective, optimizer, total, cfg, rank, log)
    distributed.barrier()
    return ckpt_path


def check_objective(backbone: str, overrides: dict) -> dict:
    """The ``--objective`` options checked against the family objective's keywords (typed, did-you-mean)."""
    spec = BACKBONES.get(backbone)
    if not isinstance(spec, BackboneSpec) or spec.pretrain is None:
        raise ValueError(f"{backbone} has no pretraining objective")
    objective = getattr(spec.pretrain, "func", spec.pretrain)  # the family's objective class (maybe in a partial)
    return keyword_overrides(objective, overrides, f"the {spec.family} objective")


def _to(views, device: torch.device):
    """Move a batch (tensor, list of crops, or (views, captions)) to ``device``."""
    if isinstance(views, torch.Tensor):
        return views.to(device, non_blocking=True)
    if isinstance(views, (list, tuple)):
        return type(views)(_to(v, device) for v in views)
    return views


def _save(path: Path, objective, optimizer, step: int, cfg: PretrainConfig, rank: int, log: list[dict]) -> None:
    if rank != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": objective.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "rng": torch.get_rng_state(), "config": json.dumps(asdict(cfg)), "evalsuite_version": __version__,
             **getattr(objective, "checkpoint_extras", dict)()}  # e.g. Pixel-BERT's tokenizer and BERT config
    atomic_save(path, lambda tmp: torch.save(state, tmp))
    with open(path.parent / "log.jsonl", "a") as fh:
        fh.writelines(json.dumps(entry) + "\n" for entry in log)
    log.clear()
    atomic_write_text(path.parent / "config.json", json.dumps(asdict(cfg), indent=1))
