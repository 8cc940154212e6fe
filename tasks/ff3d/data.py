"""Feed-forward 3D data in the WAI / MapAnything scene format, and MapAnything's benchmark view sets.

``<scene>/scene_meta.json`` lists frames with ``image``, a depth key, ``transform_matrix`` (cam2world,
OpenCV) and ``fl_x, fl_y, cx, cy, w, h`` (per frame or for the scene). Depth files: ``.exr`` (WAI;
OpenCV reads them) or ``.npy`` float32 metres (the mini world's encoding); 0 or non-finite = invalid.
The covisibility matrix is read where MapAnything's loader reads it: the first ``.npy`` of
``covisibility/v0/`` (else ``scene_modalities``).

Frames are brought to the benchmark resolution as MapAnything's ``_crop_resize_if_necessary`` does
(docs/protocols.md), and view sets are drawn as its benchmark draws them: set r of the s-th test scene
from ``np.random.default_rng(777 + r + s)``, a randomised depth-first walk on the covisibility graph.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evalsuite.data import DataNotFoundError, read_image, read_json_file, require_fields, within
from evalsuite.safeload import load_string_array

BENCHMARK_SEED = 777  # MapAnything's configs/dataset/*_wai/test/default.yaml
SETS_PER_SCENE = 10  # "Sample 10 multi-view sets from each scene"


@dataclass
class Frame:
    name: str
    rgb: np.ndarray  # H×W×3 uint8
    depth: np.ndarray  # H×W float32 metres, 0 = invalid
    intrinsics: np.ndarray  # 3×3 OpenCV
    cam2world: np.ndarray  # 4×4 OpenCV


def read_depth(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataNotFoundError(f"depth file {path} not found")
    if path.suffix == ".npy":
        depth = np.load(path).astype(np.float32)
    elif path.suffix == ".exr":
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
        import cv2

        depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise DataNotFoundError(f"cannot read {path}: OpenCV built without OpenEXR support")
        depth = depth[..., 0] if depth.ndim == 3 else depth
    else:
        raise ValueError(f"unsupported depth file {path} (.exr or .npy)")
    return np.where(np.isfinite(depth), depth, 0).astype(np.float32)


def scene_meta(scene_dir: Path) -> dict:
    path = Path(scene_dir) / "scene_meta.json"
    if not path.is_file():
        raise DataNotFoundError(f"not a WAI scene: {path} missing")
    meta = require_fields(read_json_file(path), {"frames": list}, str(path))
    for k, frame in enumerate(meta["frames"]):
        require_fields(frame, {"transform_matrix": list}, f"{path}: frame {k}")
    return meta


def frame_key(meta: dict, modality: str) -> str:
    """The frame-dict key of a modality (WAI ``frame_modalities``; the modality's own name otherwise)."""
    entry = meta.get("frame_modalities", {}).get(modality)
    return entry["frame_key"] if isinstance(entry, dict) and "frame_key" in entry else modality


def load_frame(scene_dir: Path, meta: dict, index: int, depth_modality: str = "depth") -> Frame:
    f = meta["frames"][index]
    scene_dir = Path(scene_dir)
    get = lambda key: f.get(key, meta.get(key))  # per-frame, else the scene's shared intrinsics
    where = f"{scene_dir / 'scene_meta.json'}: frame {index}"
    require_fields({k: get(k) for k in ("fl_x", "fl_y", "cx", "cy")}, dict.fromkeys(("fl_x", "fl_y", "cx", "cy"),
                                                                                   (int, float)), where)
    require_fields(f, {frame_key(meta, "image"): str}, where)
    K = np.array([[get("fl_x"), 0, get("cx")], [0, get("fl_y"), get("cy")], [0, 0, 1]], dtype=np.float64)
    cam2world = np.array(f["transform_matrix"], dtype=np.float64).reshape(4, 4)
    name = f.get("frame_name", f["image"])
    if not np.isfinite(cam2world).all() or not np.isfinite(K).all():
        raise ValueError(f"{scene_dir.name}/{name}: non-finite camera pose or intrinsics in scene_meta.json")
    meta_file = scene_dir / "scene_meta.json"
    image_path = within(scene_dir, f[frame_key(meta, "image")], meta_file)
    if not image_path.is_file():
        raise DataNotFoundError(f"image {image_path} not found")
    depth_key = frame_key(meta, depth_modality)
    if depth_key not in f:
        raise DataNotFoundError(f"{scene_dir.name}/{name}: no {depth_modality!r} entry in scene_meta.json")
    depth = read_depth(within(scene_dir, f[depth_key], meta_file))
    return Frame(name, np.asarray(read_image(image_path)), depth, K, cam2world)


def load_scene(scene_dir: str | Path, depth_modality: str = "depth") -> tuple[list[Frame], np.ndarray | None]:
    scene_dir = Path(scene_dir)
    meta = scene_meta(scene_dir)
    frames = [load_frame(scene_dir, meta, i, depth_modality) for i in range(len(meta["frames"]))]
    return frames, covisibility(scene_dir, meta)


def covisibility(scene_dir: Path, meta: dict | None = None) -> np.ndarray | None:
    """The pairwise covisibility (float32): MapAnything's loader takes the first .npy of
    covisibility/v0/; ``scene_modalities`` names it otherwise."""
    folder = Path(scene_dir) / "covisibility" / "v0"
    found = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if found:
        return np.load(found[0]).astype(np.float32)
    meta = meta or scene_meta(scene_dir)
    entry = meta.get("scene_modalities", {}).get("pairwise_covisibility") or meta.get("scene_modalities", {}).get("covisibility")
    if entry is None:
        return None
    key = entry["scene_key"] if isinstance(entry, dict) else entry
    return np.load(within(scene_dir, key, Path(scene_dir) / "scene_meta.json")).astype(np.float32)


def list_scenes(root: str | Path) -> list[Path]:
    scenes = sorted(p.parent for p in Path(root).glob("*/scene_meta.json"))
    if not scenes:
        raise DataNotFoundError(f"no WAI scenes (*/scene_meta.json) under {root}")
    return scenes


def scene_list(root: Path, split: str) -> list[Path]:
    """The scenes of ``split``, in order: ``splits/<split>.txt`` (one scene per line), or MapAnything's
    ``*_scene_list_<split>.npy`` under ``root`` or ``root/<split>/``."""
    root = Path(root)
    listing = root / "splits" / f"{split}.txt"
    source = listing
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    else:
        found = sorted([*root.glob(f"*scene_list_{split}.npy"), *root.glob(f"{split}/*scene_list_{split}.npy")])
        if not found:
            raise DataNotFoundError(f"no {split} scene list under {root}: expected splits/{split}.txt or MapAnything's "
                                    f"*_scene_list_{split}.npy")
        names, source = load_string_array(found[0]), found[0]
    scenes = [within(root, n, source) for n in names]  # a scene name that climbs out of the root is refused
    missing = [s for s in scenes if not (s / "scene_meta.json").is_file()]
    if missing:
        raise DataNotFoundError(f"scene {missing[0]} of the {split} list has no scene_meta.json"
                                f"{f' (+{len(missing) - 1} more)' if len(missing) > 1 else ''}")
    return scenes


# ---------------------------------------------------------------------------------------
# MapAnything's resize and crop to the benchmark resolution
# ---------------------------------------------------------------------------------------
def crop_resize(frame: Frame, size: tuple[int, int]) -> Frame:
    """MapAnything's ``_crop_resize_if_necessary`` (principal point not centred, no augmentation):
    scale by max(W/w, H/h) + 1e-8 to floor sizes (image PIL Lanczos when shrinking, else bicubic;
    depth nearest, OpenCV), intrinsics scaled in the COLMAP convention, then a centred crop."""
    import cv2

    W, H = size
    h, w = frame.depth.shape
    scale = max(W / w, H / h) + 1e-8
    nw, nh = math.floor(w * scale), math.floor(h * scale)
    image = Image.fromarray(frame.rgb).resize((nw, nh), Image.LANCZOS if scale < 1 else Image.BICUBIC)
    depth = cv2.resize(frame.depth, (nw, nh), interpolation=cv2.INTER_NEAREST)
    K = frame.intrinsics.copy()
    K[:2, 2] += 0.5
    K[:2] *= scale
    K[:2, 2] -= 0.5
    left, top = int(np.round(0.5 * (nw - W))), int(np.round(0.5 * (nh - H)))
    K[0, 2] -= left
    K[1, 2] -= top
    rgb = np.asarray(image)[top : top + H, left : left + W]
    return Frame(frame.name, np.ascontiguousarray(rgb), np.ascontiguousarray(depth[top : top + H, left : left + W]), K,
                 frame.cam2world)


def camera_geometry(frame: Frame) -> dict[str, np.ndarray]:
    """Per pixel: unit ray directions (camera frame; OpenCV pixel convention), points in the camera
    frame (z = depth), and the GT valid mask (depth > 0, finite)."""
    h, w = frame.depth.shape
    K = frame.intrinsics
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((h, w))], -1)
    points = rays * frame.depth[..., None]
    unit = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    valid = (frame.depth > 0) & np.isfinite(points).all(-1)
    return {"rays": unit.astype(np.float32), "points_cam": points.astype(np.float32), "valid": valid}


# ---------------------------------------------------------------------------------------
# MapAnything's view sampling (`mapanything/datasets/base/base_dataset.py`)
# ---------------------------------------------------------------------------------------
def random_walk(rng: np.random.Generator, covis: np.ndarray, n: int, threshold: float, max_retries: int = 4) -> np.ndarray:
    """A randomised depth-first walk over views whose symmetrised, self-normalised covisibility is
    above ``threshold``; up to 4 starts (views of failed walks are not restarted from); the longest walk."""
    excluded: set = set()
    best: list = []
    for _ in range(max_retries):
        visited: set = set()
        walk: list = []
        stack: list = []
        available = list(set(range(len(covis))) - excluded)  # CPython set order, as the reference
        if not available:
            break
        start = rng.choice(available)
        walk.append(start)
        visited.add(start)
        stack.append(start)
        while len(walk) < n and stack:
            current = stack[-1]
            row = (covis[current, :] + covis[:, current].T) / 2
            row = row / (row[current] + 1e-8)
            row[current] = 0
            candidates = [i for i in np.flatnonzero((row > threshold).astype(int)) if i not in visited]
            if candidates:
                nxt = rng.choice(candidates)
                walk.append(nxt)
                visited.add(nxt)
                stack.append(nxt)
            else:
                stack.pop()
        if len(walk) > len(best):
            best = walk
        if len(walk) >= n:
            return np.array(walk)
        excluded.update(visited)
    return np.array(best)


def sample_view_indices(rng: np.random.Generator, n: int, covis: np.ndarray, threshold: float) -> np.ndarray:
    """All views in random order when the scene has exactly ``n``; draws with replacement when it has
    fewer, or when the walk comes up short; else the walk (its start is view 0)."""
    total = len(covis)
    if n == total:
        return rng.permutation(total)
    if n > total:
        return rng.choice(total, size=n, replace=True)
    walk = random_walk(rng, covis, n, threshold)
    return rng.choice(walk, size=n, replace=True) if len(walk) < n else walk


def benchmark_sets(scenes: list[Path], n: int, threshold: float) -> list[tuple[int, int, np.ndarray]]:
    """(scene position, repetition, view indices) of MapAnything's test sets: 10 per scene, set r of
    scene s from ``default_rng(777 + r + s)``."""
    out = []
    for s, scene in enumerate(scenes):
        covis = covisibility(scene)
        if covis is None:
            raise DataNotFoundError(f"{scene}: no covisibility matrix (covisibility/v0/*.npy)")
        for r in range(SETS_PER_SCENE):
            out.append((s, r, sample_view_indices(np.random.default_rng(BENCHMARK_SEED + r + s), n, covis, threshold)))
    return out
