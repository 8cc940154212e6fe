"""`imagenet-mini`: procedurally drawn 2-D scenes in the ImageNet ImageFolder layout.

A stand-in for the MuJoCo scene renderer: each image has a textured background, one dominant
object and smaller distractors; the class is the dominant object's shape × colour, so a
classifier must find the largest object, not just the most common colour.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import Size, register_mini

SHAPES = ("disk", "square", "triangle", "cross")
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (50, 70, 210)}
CLASSES = [f"{shape}_{colour}" for shape in SHAPES for colour in COLOURS]
PER_CLASS = {"small": (24, 8), "medium": (80, 20), "large": (300, 50)}  # (train, val) images
IMAGE_SIZE = 96


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # cross
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)


def render(label: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    shape, colour = CLASSES[label].split("_")
    base = rng.uniform(60, 200, size=3)
    noise = rng.normal(0, 18, size=(size // 8, size // 8, 3))
    texture = np.kron(noise, np.ones((8, 8, 1))) + base
    image = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):  # distractors: any shape/colour, clearly smaller
        d_shape = SHAPES[rng.integers(len(SHAPES))]
        d_colour = list(COLOURS.values())[rng.integers(len(COLOURS))]
        r = rng.uniform(0.06, 0.11) * size
        _draw_shape(draw, d_shape, *rng.uniform(r, size - r, size=2), r, d_colour)
    r = rng.uniform(0.2, 0.3) * size
    jitter = rng.integers(-25, 26, size=3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
    _draw_shape(draw, shape, *rng.uniform(r, size - r, size=2), r, fill)
    return image


@register_mini("imagenet-mini", version=1, description="ImageFolder train/val, 12 classes (shape × colour)")
def generate(out: Path, size: Size, seed: int) -> None:
    n_train, n_val = PER_CLASS[size]
    for split_id, (split, count) in enumerate((("train", n_train), ("val", n_val))):
        for label, name in enumerate(CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, label, i])
                render(label, rng).save(folder / f"{name}_{i:05d}.jpg", quality=92)
    (out / "classes.json").write_text(json.dumps(CLASSES))
