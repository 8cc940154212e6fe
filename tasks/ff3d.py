"""Feed-forward 3D data in the WAI / MapAnything scene format.

``<scene>/scene_meta.json`` lists frames with ``image``, ``depth``, ``transform_matrix`` (cam2world,
OpenCV) and ``fl_x, fl_y, cx, cy, w, h``; ``scene_modalities.covisibility`` names an N×N matrix.
Depth files: ``.exr`` (WAI; needs OpenCV built with OpenEXR) or ``.npy`` float32 metres (the mini
world's encoding); 0 or non-finite = invalid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evalsuite.data import DataNotFoundError


@dataclass
class Frame:
    name: str
    rgb: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray
    cam2world: np.ndarray


def read_depth(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        depth = np.load(path).astype(np.float32)
    elif path.suffix == ".exr":
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
        import cv2

        depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise DataNotFoundError(f"cannot read {path}: OpenCV without OpenEXR support")
        depth = depth[..., 0] if depth.ndim == 3 else depth
    else:
        raise ValueError(f"unsupported depth file {path}")
    return np.where(np.isfinite(depth), depth, 0).astype(np.float32)


def load_scene(scene_dir: str | Path) -> tuple[list[Frame], np.ndarray | None]:
    scene_dir = Path(scene_dir)
    meta_path = scene_dir / "scene_meta.json"
    if not meta_path.is_file():
        raise DataNotFoundError(f"not a WAI scene: {meta_path} missing")
    meta = json.loads(meta_path.read_text())
    frames = []
    for f in meta["frames"]:
        K = np.array([[f["fl_x"], 0, f["cx"]], [0, f["fl_y"], f["cy"]], [0, 0, 1]], dtype=np.float64)
        frames.append(Frame(f.get("frame_name", f["image"]), np.asarray(Image.open(scene_dir / f["image"]).convert("RGB")),
                            read_depth(scene_dir / f["depth"]), K, np.array(f["transform_matrix"], dtype=np.float64)))
    covis = meta.get("scene_modalities", {}).get("covisibility")
    return frames, (np.load(scene_dir / covis) if covis else None)


def list_scenes(root: str | Path) -> list[Path]:
    scenes = sorted(p.parent for p in Path(root).glob("*/scene_meta.json"))
    if not scenes:
        raise DataNotFoundError(f"no WAI scenes (*/scene_meta.json) under {root}")
    return scenes
