"""The mini datasets: MuJoCo scenes written in the layouts of the real datasets.

Each writer produces exactly the files its task's real-format loader reads (the loaders live
with their tasks). Sizes are (train, eval) counts per ``small | medium | large``; ``small`` keeps
CI fast. Every random draw comes from ``np.random.default_rng([seed, dataset, split, index])``,
so a dataset is a pure function of (version, size, seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from . import Size, register_mini
from .language import captions, confusable, questions, tokens, visible_objects
from .scenes import CLASSES, SHAPES, Camera, SceneObject, SceneRenderer, render_scene, sample_camera, sample_objects, sample_scene

_IDS = {"imagenet": 1, "nyuv2": 2, "ade20k": 3, "ff3d": 4, "vqa": 5, "retrieval": 6, "pretrain": 7}


def _rng(seed: int, dataset: str, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, _IDS[dataset], *parts])


def _save_jpg(array: np.ndarray, path: Path, quality: int = 92) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=quality)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


# ---------------------------------------------------------------------------------------
# imagenet-mini: ImageFolder, class = the dominant object's shape × colour
# ---------------------------------------------------------------------------------------
IMAGENET_COLOURS = ("red", "blue", "green")
IMAGENET_CLASSES = tuple(f"{shape}_{colour}" for shape in SHAPES for colour in IMAGENET_COLOURS)
# small: 20 val images per class (300), so that one standard error of top-1 is ≈2.6 points, not ≈4 at 8.
IMAGENET_SIZES = {"small": (24, 20), "medium": (80, 20), "large": (300, 50)}


def closeup_view(shape: str, colour: str, rng: np.random.Generator, size: int = 128, tries: int = 20):
    """(scene, view): a close-up whose largest visible object is a large ``colour`` ``shape`` (about a
    quarter of the frame). Distractors are small and of any shape and colour."""
    for _ in range(tries):
        hero = SceneObject(shape, colour, ("rubber", "metal")[rng.integers(2)], "large",
                           float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)), float(rng.uniform(0, np.pi)),
                           float(rng.uniform(0.8, 1.25)))
        objects = sample_objects(rng, int(rng.integers(2, 6)), (hero,))
        objects = (hero,) + tuple(o.__class__(**{**o.__dict__, "size": "small"}) for o in objects[1:])
        scene = sample_scene(rng, n_views=0, fixed=objects, n_objects=len(objects))
        camera = sample_camera(rng, target=(hero.x, hero.y, hero.radius), distance=(0.75, 1.1), height=(0.45, 0.95))
        scene = scene.__class__(objects=objects, cameras=(camera,),
                                floor=scene.floor, wall=scene.wall, lights=scene.lights)
        view = render_scene(scene, size, size)[0]
        counts = np.bincount(view.instance.ravel(), minlength=len(objects) + 1)[1:]
        if counts.argmax() == 0 and counts[0] > 0:
            return scene, view
    raise RuntimeError(f"could not render a view dominated by a {colour} {shape}")


def imagenet_view(label: int, rng: np.random.Generator, size: int = 128):
    """A close-up of class ``label``: the class is the dominant object's, not the commonest colour."""
    return closeup_view(*IMAGENET_CLASSES[label].split("_"), rng, size)[1]


@register_mini("imagenet-mini", version=4, description="ImageFolder train/val; 15 classes = dominant object's shape × colour")
def make_imagenet(out: Path, size: Size, seed: int) -> None:
    for split_id, (split, count) in enumerate(zip(("train", "val"), IMAGENET_SIZES[size])):
        for label, name in enumerate(IMAGENET_CLASSES):
            for i in range(count):
                view = imagenet_view(label, _rng(seed, "imagenet", split_id, label, i))
                _save_jpg(view.rgb, out / split / name / f"{name}_{i:05d}.JPEG")
    _write_json(list(IMAGENET_CLASSES), out / "classes.json")


# ---------------------------------------------------------------------------------------
# nyuv2-mini: the labeled .mat (MATLAB v7.3 = HDF5) + splits.mat, and the BTS "sync" layout
# ---------------------------------------------------------------------------------------
NYU_SIZES = {"small": (24, 12), "medium": (120, 40), "large": (600, 120)}
NYU_FOCAL = 518.8579  # Kinect focal of the NYUv2 480×640 frames; the mini world uses the same camera
NYU_FOVY = float(np.degrees(2 * np.arctan(240 / NYU_FOCAL)))
MAT73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2026 HDF5 schema 1.00 ."
# scipy writes the creation time into a MAT 5 header; a fixed one keeps generated worlds byte-identical
MAT5_HEADER = b"MATLAB 5.0 MAT-file Platform: posix, Created on: Thu Jan  1 00:00:00 2026"


def _nyu_views(count: int, seed: int, split_id: int):
    """Indoor-like views: two per scene, camera at eye height looking across the room."""
    views = []
    for s in range((count + 1) // 2):
        rng = _rng(seed, "nyuv2", split_id, s)
        scene = sample_scene(rng, n_views=0)
        cams = tuple(Camera(c.position, c.target, NYU_FOVY) for c in (sample_camera(rng, height=(1.0, 1.6)) for _ in range(2)))
        scene = scene.__class__(scene.objects, cams, scene.floor, scene.wall, scene.lights)
        views += [(f"room_{split_id}{s:04d}", k, v) for k, v in enumerate(render_scene(scene, 640, 480))]
    return views[:count]


def _write_mat73(path: Path, datasets: dict[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in datasets.items():
            f.create_dataset(name, data=array, compression="gzip", compression_opts=1)
    header = MAT73_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header)


def _write_mat5(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from scipy.io import savemat

    savemat(path, arrays)
    with open(path, "r+b") as fh:
        fh.write(MAT5_HEADER.ljust(116, b"\x00"))


# v3: splits.mat no longer embeds its creation time (same content, reproducible bytes)
@register_mini("nyuv2-mini", version=3, description="NYUv2 labeled .mat + splits.mat and BTS sync layout, 480×640, metres")
def make_nyuv2(out: Path, size: Size, seed: int) -> None:
    n_train, n_test = NYU_SIZES[size]
    train, test = _nyu_views(n_train, seed, 0), _nyu_views(n_test, seed, 1)
    every = train + test
    # MATLAB stores H×W×3×N column-major, which h5py reads as N×3×W×H (the real file's layout).
    _write_mat73(out / "nyu_depth_v2_labeled.mat", {
        "images": np.stack([v.rgb.transpose(2, 1, 0) for _, _, v in every]),
        "depths": np.stack([v.depth.T for _, _, v in every]).astype(np.float32),
        "labels": np.stack([v.semantic.T for _, _, v in every]).astype(np.uint16),
    })
    _write_mat5(out / "splits.mat", {"trainNdxs": np.arange(1, len(train) + 1)[:, None].astype(np.float64),
                                 "testNdxs": np.arange(len(train) + 1, len(every) + 1)[:, None].astype(np.float64)})
    for _split, views, root, list_name, lead in (
        ("train", train, out / "sync", "nyudepthv2_train_files_with_gt.txt", "/"),
        ("test", test, out / "official_splits" / "test", "nyudepthv2_test_files_with_gt.txt", ""),
    ):
        lines = []
        for scene, k, v in views:
            rgb, dep = f"{scene}/rgb_{k:05d}.jpg", f"{scene}/sync_depth_{k:05d}.png"
            _save_jpg(v.rgb, root / rgb, quality=95)
            _save_png(np.round(v.depth * 1000).astype(np.uint16), root / dep)  # millimetres, 0 = invalid
            lines.append(f"{lead}{rgb} {lead}{dep} {NYU_FOCAL}")
        (out / list_name).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------
# ade20k-mini: ADEChallengeData2016, 0 = other, 1..K
# ---------------------------------------------------------------------------------------
ADE_SIZES = {"small": (48, 16), "medium": (200, 50), "large": (1000, 200)}
ADE_CLASSES = CLASSES[1:]  # label k (1..K) is CLASSES[k]; 0 = other


@register_mini("ade20k-mini", version=2, description=f"ADEChallengeData2016 layout, K={len(ADE_CLASSES)} classes, 192×256")
def make_ade20k(out: Path, size: Size, seed: int) -> None:
    root = out / "ADEChallengeData2016"
    for split_id, (split, prefix, count) in enumerate(zip(("training", "validation"), ("train", "val"), ADE_SIZES[size])):
        for s in range((count + 1) // 2):
            scene = sample_scene(_rng(seed, "ade20k", split_id, s), n_views=2)
            for k, v in enumerate(render_scene(scene, 256, 192)):
                idx = 2 * s + k + 1
                if idx > count:
                    break
                _save_jpg(v.rgb, root / "images" / split / f"ADE_{prefix}_{idx:08d}.jpg")
                _save_png(v.semantic.astype(np.uint8), root / "annotations" / split / f"ADE_{prefix}_{idx:08d}.png")
    _write_json({"num_classes": len(ADE_CLASSES), "classes": list(ADE_CLASSES), "ignore": "0 = other"}, root / "classes.json")


# ---------------------------------------------------------------------------------------
# ff3d-mini: WAI / MapAnything scenes
# ---------------------------------------------------------------------------------------
FF3D_SIZES = {"small": (8, 4, 6), "medium": (24, 8, 8), "large": (96, 16, 8)}  # (train scenes, test scenes, views)


def covisibility(views, rel_tol: float = 0.03) -> np.ndarray:
    """MapAnything's pairwise covisibility (``denominator_mode: full``): C[i, j] = share of all of view
    i's pixels whose surface view j sees at a consistent depth (the diagonal: view i's valid share)."""
    n = len(views)
    out = np.zeros((n, n))
    for i, a in enumerate(views):
        h, w = a.depth.shape
        v, u = np.nonzero(a.depth > 0)
        z = a.depth[v, u]
        cam = np.stack([(u - a.intrinsics[0, 2]) / a.intrinsics[0, 0] * z, (v - a.intrinsics[1, 2]) / a.intrinsics[1, 1] * z, z], 1)
        world = cam @ a.cam2world[:3, :3].T + a.cam2world[:3, 3]
        out[i, i] = len(z) / (h * w)
        for j, b in enumerate(views):
            if i == j:
                continue
            w2c = np.linalg.inv(b.cam2world)
            p = world @ w2c[:3, :3].T + w2c[:3, 3]
            front = p[:, 2] > 1e-6
            uu = np.round(b.intrinsics[0, 0] * p[:, 0] / np.where(front, p[:, 2], 1) + b.intrinsics[0, 2]).astype(int)
            vv = np.round(b.intrinsics[1, 1] * p[:, 1] / np.where(front, p[:, 2], 1) + b.intrinsics[1, 2]).astype(int)
            inside = front & (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            seen = np.zeros_like(inside)
            d = b.depth[vv[inside], uu[inside]]
            seen[inside] = (d > 0) & (np.abs(d - p[inside, 2]) < rel_tol * p[inside, 2])
            out[i, j] = seen.sum() / (h * w)
    return out


# v3: train and test scenes (splits/*.txt), covisibility where MapAnything's loader reads it
# (covisibility/v0/pairwise_covisibility--NxN.npy, float32, full denominator)
@register_mini("ff3d-mini", version=3, description="WAI scenes (train/test): scene_meta.json, PNG images, float32 .npy depth, "
                                                  "covisibility")
def make_ff3d(out: Path, size: Size, seed: int) -> None:
    n_train, n_test, n_views = FF3D_SIZES[size]
    splits = {"train": [], "test": []}
    for s in range(n_train + n_test):
        split = "train" if s < n_train else "test"
        scene = sample_scene(_rng(seed, "ff3d", s), n_views=n_views)
        views = render_scene(scene, 160, 128)
        name = f"{split}_{s:04d}"
        root = out / name
        frames = []
        for k, v in enumerate(views):
            _save_png(v.rgb, root / "images" / f"{k:05d}.png")
            (root / "depth").mkdir(parents=True, exist_ok=True)
            np.save(root / "depth" / f"{k:05d}.npy", v.depth)
            K = v.intrinsics
            frames.append({"frame_name": f"{k:05d}", "image": f"images/{k:05d}.png", "file_path": f"images/{k:05d}.png",
                           "depth": f"depth/{k:05d}.npy", "transform_matrix": v.cam2world.tolist(), "fl_x": K[0, 0],
                           "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": v.rgb.shape[1], "h": v.rgb.shape[0]})
        covis = f"covisibility/v0/pairwise_covisibility--{len(views)}x{len(views)}.npy"
        (root / covis).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / covis, covisibility(views).astype(np.float32))
        _write_json({"scene_name": name, "dataset_name": "ff3d-mini", "version": "0.1", "camera_model": "PINHOLE",
                     "camera_convention": "opencv", "shared_intrinsics": False, "scale_type": "metric",
                     "depth_encoding": "float32 .npy, metres, z-depth, 0 = invalid",
                     "scene_modalities": {"pairwise_covisibility": {"scene_key": covis, "format": "mmap"}},
                     "frame_modalities": {"image": {"frame_key": "image", "format": "image"},
                                          "depth": {"frame_key": "depth", "format": "depth"}},
                     "frames": frames}, root / "scene_meta.json")
        splits[split].append(name)
    for split, names in splits.items():
        (out / "splits").mkdir(exist_ok=True)
        (out / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")


# ---------------------------------------------------------------------------------------
# vqa-mini (VQA v2 json) and retrieval-mini (Karpathy json); pretrain-mini
# ---------------------------------------------------------------------------------------
VQA_SIZES = {"small": (160, 40), "medium": (600, 160), "large": (3000, 600)}
VQA_QUESTIONS = 3  # per image: more images, fewer questions each, is more visual variety for the same training cost
VQA_DISAGREEMENT = 0.1  # chance that each of the 10 annotators types a confusable answer
RETRIEVAL_SIZES = {"small": (80, 10, 40), "medium": (300, 40, 80), "large": (1500, 200, 300)}
PRETRAIN_SIZES = {"small": 400, "medium": 2000, "large": 10000}
FLOOR_WORDS = {"checker": "checkered", "gradient": "shaded", "flat": "plain"}


def _captioned_views(dataset: str, count: int, seed: int, split_id: int, size: int = 128, closeups: bool = False):
    """(index, scene, view, visible objects, generator, close-up object or None): room views (two per
    scene), or with ``closeups`` close-ups of one large object of any shape in one of imagenet-mini's
    three colours. Questions and captions about a close-up can be learnt from a few hundred examples
    (measured on vqa-mini small, pixio-tiny: colour of the large object 77.5 % paired vs 45.0 % with
    shuffled images); room views, or 8 colours, need far more data than a mini world should hold."""
    if not closeups:
        for s in range((count + 1) // 2):
            rng = _rng(seed, dataset, split_id, s)
            scene = sample_scene(rng, n_views=2)
            with SceneRenderer(scene, size, size) as renderer:
                for k in range(2):
                    if 2 * s + k < count:
                        view = renderer.render(k)
                        yield 2 * s + k, scene, view, visible_objects(scene.objects, view.instance), rng, None
        return
    for idx in range(count):
        rng = _rng(seed, dataset, split_id, 100_000 + idx)
        scene, view = closeup_view(SHAPES[rng.integers(len(SHAPES))], IMAGENET_COLOURS[rng.integers(len(IMAGENET_COLOURS))],
                                   rng, size)
        yield idx, scene, view, visible_objects(scene.objects, view.instance), rng, scene.objects[0]


# v3: close-ups, each asked the colour and shape of their large object; 3 questions per image
@register_mini("vqa-mini", version=3, description="VQA v2 questions/annotations json, CLEVR-style templates, 10 answers")
def make_vqa(out: Path, size: Size, seed: int) -> None:
    for split_id, (split, count) in enumerate(zip(("train2014", "val2014"), VQA_SIZES[size])):
        qs, anns = [], []
        for idx, _, view, visible, rng, hero in _captioned_views("vqa", count, seed, split_id, closeups=True):
            image_id = split_id * 1_000_000 + idx + 1
            _save_jpg(view.rgb, out / split / f"COCO_{split}_{image_id:012d}.jpg")
            for q_i, (question, answer, qtype) in enumerate(questions(visible, rng, hero, count=VQA_QUESTIONS)):
                qid = image_id * 100 + q_i
                qs.append({"image_id": image_id, "question": question, "question_id": qid})
                answers = [confusable(answer, rng) if rng.random() < VQA_DISAGREEMENT else answer for _ in range(10)]
                anns.append({"question_id": qid, "image_id": image_id, "question_type": qtype,
                             "answer_type": "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other",
                             "multiple_choice_answer": answer,
                             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)]})
        info = {"description": "evalsuite vqa-mini", "version": "1", "disagreement": VQA_DISAGREEMENT}
        _write_json({"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": split,
                     "questions": qs, "license": {}}, out / f"v2_OpenEnded_mscoco_{split}_questions.json")
        _write_json({"info": info, "data_type": "mscoco", "data_subtype": split, "annotations": anns, "license": {}},
                    out / f"v2_mscoco_{split}_annotations.json")


# v3: half the images are close-ups of one large object
@register_mini("retrieval-mini", version=3, description="Karpathy json, 5 templated captions per image")
def make_retrieval(out: Path, size: Size, seed: int) -> None:
    images, sent_id = [], 0
    for split_id, (split, count) in enumerate(zip(("train", "val", "test"), RETRIEVAL_SIZES[size])):
        for idx, scene, view, visible, rng, _ in _captioned_views("retrieval", count, seed, split_id, closeups=True):
            name = f"{split}_{idx:06d}.jpg"
            _save_jpg(view.rgb, out / "images" / name)
            img_id = len(images)
            sentences = []
            for caption in captions(visible, rng, FLOOR_WORDS[scene.floor["builtin"]]):
                sentences.append({"raw": caption, "tokens": tokens(caption), "imgid": img_id, "sentid": sent_id})
                sent_id += 1
            images.append({"filename": name, "imgid": img_id, "split": split, "sentences": sentences,
                           "sentids": [s["sentid"] for s in sentences]})
    _write_json({"images": images, "dataset": "mini"}, out / "dataset_mini.json")


@register_mini("pretrain-mini", version=2, description="unlabeled images (scenes + object close-ups) and image–caption pairs")
def make_pretrain(out: Path, size: Size, seed: int) -> None:
    """Half room views with captions (captions.jsonl), half unlabelled object close-ups drawn like
    imagenet-mini's images but from other seeds: pretraining data from the evaluation distribution
    without its labels, as MAE pretrains on ImageNet images."""
    count = PRETRAIN_SIZES[size]
    lines = []
    for idx, scene, view, visible, rng, _ in _captioned_views("pretrain", count // 2, seed, 0):
        name = f"images/scene_{idx:06d}.jpg"
        _save_jpg(view.rgb, out / name)
        caption = captions(visible, rng, FLOOR_WORDS[scene.floor["builtin"]], count=1)[0]
        lines.append(json.dumps({"image": name, "caption": caption}))
    for idx in range(count - count // 2):
        rng = _rng(seed, "pretrain", 1, idx)
        _save_jpg(imagenet_view(int(rng.integers(len(IMAGENET_CLASSES))), rng).rgb, out / "images" / f"object_{idx:06d}.jpg")
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
