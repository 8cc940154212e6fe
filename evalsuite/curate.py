"""Pixio's soft self-curation: score images by how hard a masked autoencoder finds them.

score = reconstruction loss under a pretrained MAE-style checkpoint, min-max normalised to [0, 1]
over the images that pass the filters, and 0 for images that fail them (colour-histogram entropy ≤ 4.5 bits or a
side < 320 px, the paper's thresholds). The pretraining sampler keeps an image with probability
equal to its score. The paper's scoring code is not released; the histogram is 8 bins per RGB
channel (512 colours), entropy in bits, and masks are drawn from a fixed seed so scores are
reproducible.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoints import BackboneSpec, build_backbone
from .fileio import atomic_write_text
from .pretrain import IMAGE_SUFFIXES, PretrainConfig
from .registry import BACKBONES
from .sampling import seeded


def colour_entropy(image: Image.Image, bins: int = 8) -> float:
    """Shannon entropy (bits) of the image's colour histogram with ``bins`` levels per channel."""
    q = (np.asarray(image.convert("RGB"), dtype=np.int64) * bins) // 256
    codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    p = np.bincount(codes.ravel(), minlength=bins**3) / codes.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def load_objective(checkpoint: str | Path):
    """The pretraining objective (encoder + decoder) saved by `evalsuite pretrain`."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = PretrainConfig(**json.loads(state["config"]))
    spec: BackboneSpec = BACKBONES.get(cfg.backbone)
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else None
    objective = spec.pretrain(build_backbone(spec, "random"), image_size=size, **cfg.objective)
    if not hasattr(objective, "reconstruction_error"):
        raise ValueError(f"{checkpoint} was pretrained with the {spec.family} objective, which reconstructs no pixels: "
                         "curation needs a masked-autoencoder checkpoint (MAE or Pixio)")
    objective.load_state_dict(state["model"])
    return objective.eval()


@torch.inference_mode()
def curate(checkpoint: str | Path, data: str | Path, min_side: int = 320, min_entropy: float = 4.5,
           batch_size: int = 32, seed: int = 0) -> dict:
    objective = load_objective(checkpoint)
    meta = objective.encoder.meta
    transform = dataclasses.replace(meta.preprocess, size=objective.image_size, resize="squash").transform()
    root = Path(data)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    grid = (objective.image_size[0] // meta.patch_size, objective.image_size[1] // meta.patch_size)
    losses, passed = [], []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = [Image.open(f).convert("RGB") for f in chunk]
        passed += [min(im.size) >= min_side and colour_entropy(im) > min_entropy for im in images]
        batch = torch.stack([transform(im) for im in images])
        noise = torch.rand(objective.noise_shape(len(chunk), grid), generator=seeded(seed, start, 3))
        losses += objective.reconstruction_error(batch, noise).tolist()
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    loss, ok = np.array(losses), np.array(passed, dtype=bool)
    if not ok.any():
        sides = sorted(min(Image.open(f).size) for f in files)
        raise ValueError(f"no image of the {len(files)} under {root} passes the filters (shorter side ≥ --min-side "
                         f"{min_side}, colour entropy > --min-entropy {min_entropy} bits; their shorter sides span "
                         f"{sides[0]}–{sides[-1]} px): the scores would select nothing; lower the thresholds")
    normalised = np.zeros_like(loss)
    if ok.any():  # min-max over the images that pass the filters; the others score 0
        lo, hi = loss[ok].min(), loss[ok].max()
        normalised[ok] = (loss[ok] - lo) / (hi - lo) if hi > lo else 1.0
    scores = {str(f.relative_to(root)): float(s) for f, s in zip(files, normalised)}
    return {"scores": scores, "scorer": str(checkpoint), "min_side": min_side, "min_entropy": min_entropy,
            "kept_fraction_expected": float(np.mean(list(scores.values()))) if scores else 0.0}


def write_scores(result: dict, out: str | Path) -> None:
    atomic_write_text(Path(out), json.dumps(result, indent=1))
