"""The mini world: exact geometry, and every writer read back by its real-format loader."""

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from evalsuite import mini
from evalsuite.data import MANIFEST
from evalsuite.mini import datasets, scenes
from evalsuite.mini.scenes import Camera, Scene, SceneObject


def _scene(objects=(), camera=Camera((0.3, -0.2, 1.7), (0.0, 0.4, 0.0), 55.0)):
    tex = {"builtin": "flat", "rgb1": np.full(3, 0.5), "rgb2": np.full(3, 0.4), "repeat": 2, "mark": 0.0}
    return Scene(tuple(objects), (camera,), tex, tex, ((0.0, 0.0, 2.5, 0.6),))


def test_depth_equals_analytic_floor_plane():
    view = scenes.render_scene(_scene(), 96, 72)[0]
    K, R, t = view.intrinsics, view.cam2world[:3, :3], view.cam2world[:3, 3]
    v, u = np.nonzero(view.semantic == scenes.FLOOR)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(len(u))], 1) @ R.T
    analytic = -t[2] / rays[:, 2]  # z-depth where the ray meets z = 0 (the ray has camera z = 1)
    rel = np.abs(view.depth[v, u] - analytic) / analytic
    assert len(u) > 0.5 * view.depth.size
    assert np.median(rel) <= 1e-5


def test_labels_match_geometry_on_a_known_object():
    box = SceneObject("box", "red", "rubber", "large", 0.0, 0.0, 0.0, 1.0)  # 0.4 m cube on the origin
    view = scenes.render_scene(_scene([box], Camera((0.0, -0.001, 2.0), (0.0, 0.0, 0.0), 60.0)), 65, 65)[0]
    centre = (32, 32)
    assert view.semantic[centre] == scenes.CLASSES.index("box") and view.instance[centre] == 1
    assert view.depth[centre] == pytest.approx(2.0 - 0.4, rel=1e-5)  # top face at z = 0.4
    # the cube's top face spans ±0.2 m at 1.6 m: ±(0.2 / 1.6)·f pixels around the centre
    f = view.intrinsics[1, 1]
    half = 0.2 / 1.6 * f
    inside, outside = int(half) - 1, int(np.ceil(half * 2.0 / 1.6)) + 2  # the cube's base is seen at 2.0 m
    assert view.instance[32, 32 + inside] == 1 and view.instance[32 + inside, 32] == 1
    assert view.semantic[32, 32 + outside] == scenes.FLOOR
    rgb = view.rgb[centre].astype(int)
    assert rgb[0] > rgb[1] + 40 and rgb[0] > rgb[2] + 40  # and it renders red


def test_cam2world_is_opencv_and_consistent_with_intrinsics():
    view = scenes.render_scene(_scene(), 80, 60)[0]
    R = view.cam2world[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.linalg.det(R) == pytest.approx(1.0)
    forward = np.subtract((0.0, 0.4, 0.0), (0.3, -0.2, 1.7))
    assert np.allclose(R[:, 2], forward / np.linalg.norm(forward))
    assert R[2, 1] < 0  # image y (down) points down in the world


@pytest.fixture(scope="module")
def made():
    return {name: mini.ensure_mini(name) for name in ("imagenet-mini", "nyuv2-mini", "ade20k-mini", "ff3d-mini",
                                                      "vqa-mini", "retrieval-mini", "pretrain-mini")}


def test_manifest_lists_every_file(made):
    for name, root in made.items():
        manifest = json.loads((root / MANIFEST).read_text())
        files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}
        assert set(manifest["files"]) == files and manifest["name"] == name and len(manifest["sha256"]) == 64


def test_imagenet_mini_through_the_task_loader(made):
    from tasks.imagenet.data import load_split

    train, val = load_split(made["imagenet-mini"], "train", None), load_split(made["imagenet-mini"], "val", None)
    assert train.classes == sorted(datasets.IMAGENET_CLASSES) == val.classes
    assert len(train) == 24 * 15 and len(val) == 20 * 15
    assert Image.open(train.samples[0][0]).size == (128, 128)


def test_nyuv2_mini_labeled_mat_and_sync_layouts_agree(made):
    from scipy.io import loadmat

    from tasks.nyuv2 import NYUv2Labeled, NYUv2Sync

    root = made["nyuv2-mini"]
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "r") as f:  # independent reader, raw MATLAB layout
        assert f["images"].shape == (36, 3, 640, 480) and f["depths"].shape == (36, 640, 480)
        raw_depth = f["depths"][24].T
    assert (root / "nyu_depth_v2_labeled.mat").read_bytes()[:10] == b"MATLAB 7.3"
    splits = loadmat(root / "splits.mat")
    assert splits["testNdxs"].ravel().tolist() == list(range(25, 37))
    labeled, sync = NYUv2Labeled(root, "test"), NYUv2Sync(root, "test")
    assert len(labeled) == len(sync) == 12 and len(NYUv2Sync(root, "train")) == 24
    rgb, depth = labeled[0]
    assert rgb.shape == (480, 640, 3) and depth.shape == (480, 640) and np.array_equal(depth, raw_depth)
    sync_rgb, sync_depth = sync[0]
    valid = depth > 0
    assert valid.mean() > 0.95 and depth[valid].max() < 10
    assert np.abs(sync_depth - depth).max() <= 0.0005 + 1e-6  # millimetre PNG vs float metres
    png = np.asarray(Image.open(sync.base / sync.samples[0][1]))
    assert png.dtype == np.uint16 and sync.samples[0][2] == pytest.approx(518.8579)
    assert np.abs(sync_rgb.astype(int) - rgb.astype(int)).mean() < 3  # the same frame (JPEG vs raw)


def test_ade20k_mini_reduce_zero_label(made):
    from tasks.ade20k import ADE20K

    root = made["ade20k-mini"]
    meta = json.loads((root / "ADEChallengeData2016" / "classes.json").read_text())
    ds = ADE20K(root, "validation")
    assert len(ds) == 16 and len(ADE20K(root, "training")) == 48
    raw = np.asarray(Image.open(ds.labels[0]))  # independent: PIL on the PNG
    rgb, label = ds[0]
    assert rgb.shape == (192, 256, 3) and raw.shape == (192, 256)
    assert raw.max() <= meta["num_classes"]
    assert np.array_equal(label[raw > 0], raw[raw > 0] - 1) and np.all(label[raw == 0] == 255)


def test_ff3d_mini_scene_round_trip_and_covisibility(made):
    from tasks.ff3d import list_scenes, load_scene

    scenes_ = list_scenes(made["ff3d-mini"])
    frames, covis = load_scene(scenes_[0])
    meta = json.loads((scenes_[0] / "scene_meta.json").read_text())
    assert len(frames) == len(meta["frames"]) == 6 and covis.shape == (6, 6)
    valid_share = [np.mean(f.depth > 0) for f in frames]  # the diagonal: each view's valid-depth share
    assert np.allclose(np.diag(covis), valid_share, atol=1e-6) and np.all((covis >= 0) & (covis <= 1))
    # a pixel of frame 0 back-projected and projected into frame 1 lands where frame 1 sees that depth
    a, b = frames[0], frames[1]
    v, u = np.nonzero(a.depth > 0)
    z = a.depth[v, u]
    pts = np.stack([(u - a.intrinsics[0, 2]) / a.intrinsics[0, 0] * z, (v - a.intrinsics[1, 2]) / a.intrinsics[1, 1] * z, z], 1)
    world = pts @ a.cam2world[:3, :3].T + a.cam2world[:3, 3]
    cam_b = (world - b.cam2world[:3, 3]) @ b.cam2world[:3, :3]
    assert cam_b[:, 2].min() > -10  # finite, well-formed poses
    assert covis[0, 1] == pytest.approx(datasets.covisibility([_as_view(a), _as_view(b)])[0, 1], abs=1e-7)  # float32


def _as_view(frame):
    return scenes.View(frame.rgb, frame.depth, None, None, frame.intrinsics, frame.cam2world)


def test_vqa_mini_files(made):
    from tasks.vqa_retrieval import load_vqa

    root = made["vqa-mini"]
    questions = json.loads((root / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    samples = load_vqa(root, "val2014")
    assert len(samples) == len(questions) > 0
    assert all(len(s.answers) == 10 and s.image.is_file() for s in samples)
    assert {s.answer_type for s in samples} <= {"yes/no", "number", "other"}
    counts = [s for s in samples if s.question.startswith("How many")]
    assert counts and all(any(a.isdigit() for a in s.answers) for s in counts)


def test_retrieval_mini_karpathy_json(made):
    from tasks.vqa_retrieval import load_karpathy

    root = made["retrieval-mini"]
    data = json.loads((root / "dataset_mini.json").read_text())
    test = load_karpathy(root / "dataset_mini.json", root / "images", "test")
    assert len(test) == sum(img["split"] == "test" for img in data["images"]) == 40
    assert all(len(item.captions) == 5 and item.image.is_file() for item in test)
    sentences = [s for img in data["images"] for s in img["sentences"]]
    assert all(" ".join(s["tokens"]).replace(" ", "") == s["raw"].lower().replace(" ", "").replace(",", "") for s in sentences)


def test_pretrain_mini_pairs(made):
    lines = (made["pretrain-mini"] / "captions.jsonl").read_text().splitlines()
    images = list((made["pretrain-mini"] / "images").glob("*.jpg"))
    assert len(images) == 400 and len(lines) == 200  # half scenes with captions, half object close-ups
    first = json.loads(lines[0])
    assert (made["pretrain-mini"] / first["image"]).is_file() and first["caption"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALSUITE_MINI_CACHE", str(tmp_path))
    calls = {"n": 0}
    real = datasets.render_scene

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # killed midway
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "render_scene", dying)
    with pytest.raises(KeyboardInterrupt):
        mini.ensure_mini("ade20k-mini")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(datasets, "render_scene", real)
    assert (mini.ensure_mini("ade20k-mini") / MANIFEST).is_file()
