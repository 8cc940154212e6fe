"""Feed-forward 3D: MapAnything's metrics with closed-form answers, its view sampling, the data path,
the probe learning from its input, and bad input."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import mini_ctx
from evalsuite.leaderboard import paired_bootstrap
from evalsuite.mini import ensure_mini
from evalsuite.registry import TASKS
from evalsuite.runner import evaluate
from tasks.ff3d.data import BENCHMARK_SEED, Frame, benchmark_sets, camera_geometry, crop_resize, random_walk, sample_view_indices
from tasks.ff3d.metrics import inlier_ratio, rel_error, set_metrics


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def scene_set(n: int = 4, seed: int = 0) -> dict:
    """A synthetic GT view set in world coordinates: cameras on a circle looking inwards, depth 2–4 m."""
    rng = np.random.default_rng(seed)
    frames = []
    K = np.array([[40.0, 0, 15.5], [0, 40.0, 11.5], [0, 0, 1]])
    for k in range(n):
        pose = np.eye(4)
        pose[:3, :3] = rotation(1, 20 * k) @ rotation(0, 5 * k)
        pose[:3, 3] = [0.3 * k, 0.1 * k, -0.2 * k]
        depth = rng.uniform(2, 4, (24, 32)).astype(np.float32)
        frames.append(Frame(str(k), np.zeros((24, 32, 3), np.uint8), depth, K, pose))
    out = {"points": [], "points_cam": [], "rays": [], "valid": [], "poses": []}
    for f in frames:
        geo = camera_geometry(f)
        out["points"].append(geo["points_cam"] @ f.cam2world[:3, :3].T + f.cam2world[:3, 3])
        out["points_cam"].append(geo["points_cam"])
        out["rays"].append(geo["rays"])
        out["valid"].append(geo["valid"])
        out["poses"].append(f.cam2world)
    return out


def transformed(side: dict, scale: float = 1.0, rigid: np.ndarray | None = None) -> dict:
    rigid = np.eye(4) if rigid is None else rigid
    out = {k: list(v) for k, v in side.items()}
    out["points"] = [(p @ rigid[:3, :3].T + rigid[:3, 3]) * scale for p in side["points"]]
    out["points_cam"] = [p * scale for p in side["points_cam"]]
    out["poses"] = []
    for q in side["poses"]:
        moved = rigid @ q
        moved[:3, 3] *= scale
        out["poses"].append(moved)
    return out


def test_a_perfect_prediction_scores_perfectly():
    gt = scene_set()
    m = set_metrics(gt, transformed(gt))
    for key in ("metric_scale_abs_rel", "pointmaps_abs_rel", "z_depth_abs_rel", "pose_ate_rmse", "ray_dirs_err_deg"):
        assert m[key] == pytest.approx(0, abs=1e-4), key
    assert m["pointmaps_inlier_thres_103"] == 1 and m["z_depth_inlier_thres_103"] == 1 and m["pose_auc_5"] == 100


@pytest.mark.parametrize("k", [0.5, 1.7])
def test_a_global_scale_only_moves_the_scale_error(k):
    gt = scene_set()
    m = set_metrics(gt, transformed(gt, scale=k))
    assert m["metric_scale_abs_rel"] == pytest.approx(abs(k - 1), rel=1e-5)
    assert m["pointmaps_abs_rel"] == pytest.approx(0, abs=1e-5) and m["z_depth_abs_rel"] == pytest.approx(0, abs=1e-5)
    assert m["pose_auc_5"] == 100 and m["pose_ate_rmse"] == pytest.approx(0, abs=1e-5)


def test_one_rigid_transform_of_the_whole_prediction_changes_nothing():
    gt = scene_set()
    rigid = np.eye(4)
    rigid[:3, :3], rigid[:3, 3] = rotation(2, 37) @ rotation(0, -12), [4.0, -2.0, 7.5]
    assert set_metrics(gt, transformed(gt, rigid=rigid)) == pytest.approx(set_metrics(gt, transformed(gt)), abs=1e-4)


@pytest.mark.parametrize("n", [2, 4, 5])
def test_rotating_one_view_by_2_5_degrees_costs_its_pairs_two_of_five_bins(n):
    gt = scene_set(n)
    pred = transformed(gt)
    turned = pred["poses"][1].copy()
    turned[:3, :3] = turned[:3, :3] @ rotation(1, 2.5)  # about its own centre
    pred["poses"][1] = turned
    # the n − 1 pairs with view 1 err by 2.5° (< 3, 4, 5 but not < 1, 2): AUC = (2·(1 − 2/n) + 3) / 5
    assert set_metrics(gt, pred)["pose_auc_5"] == pytest.approx(100 * (1 - 0.4 * 2 / n))


def test_inliers_count_norm_ratios_only():
    gt = np.random.default_rng(0).uniform(1, 3, (10, 20, 3))
    mask = np.ones((10, 20), bool)
    for factor, tau, rel in ((1.02, 1.0, 0.01), (1.04, 0.5, 0.02)):
        pred = gt.copy()
        pred[:, :10] *= factor  # half the pixels
        assert inlier_ratio(pred, gt, mask) == pytest.approx(tau) and rel_error(pred, gt, mask) == pytest.approx(rel)
    turned = gt @ rotation(2, 30).T  # same norms, other directions: an inlier by norm, a relative error by distance
    assert inlier_ratio(turned, gt, mask) == 1.0 and rel_error(turned, gt, mask) > 0.4
    assert inlier_ratio(np.zeros_like(gt), gt, mask) == 0.0  # a prediction of norm 0 is an outlier


def test_a_view_without_valid_pixels_makes_its_set_nan_as_mapanything():
    gt = scene_set(3)
    gt["valid"][2] = np.zeros_like(gt["valid"][2])
    m = set_metrics(gt, transformed(gt))
    assert math.isnan(m["pointmaps_abs_rel"]) and math.isnan(m["z_depth_inlier_thres_103"])
    assert m["pose_auc_5"] == 100  # poses do not depend on pixels


# ---------------------------------------------------------------------------------------
# View sampling
# ---------------------------------------------------------------------------------------
def block_covisibility(n: int = 12, blocks: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    covis = rng.uniform(0, 0.2, (n, n)).astype(np.float32)
    size = n // blocks
    for b in range(blocks):
        covis[b * size : (b + 1) * size, b * size : (b + 1) * size] = rng.uniform(0.3, 0.9, (size, size))
    np.fill_diagonal(covis, 0.9)
    return covis


def test_view_sets_are_deterministic_and_connected_under_the_threshold():
    covis = block_covisibility()
    for seed in range(30):
        views = sample_view_indices(np.random.default_rng(seed), 3, covis, 0.25)
        again = sample_view_indices(np.random.default_rng(seed), 3, covis, 0.25)
        assert np.array_equal(views, again) and len(set(views.tolist())) == 3
        score = lambda a, b: (covis[a, b] + covis[b, a]) / 2 / (covis[a, a] + 1e-8)
        for k, v in enumerate(views[1:], start=1):  # every view is linked to one seen before it
            assert any(score(u, v) > 0.25 for u in views[:k])
        assert len({int(v) // 4 for v in views}) == 1  # a walk never crosses between the unlinked blocks
    # four views cannot be connected within a block of four views minus... a block of 4: a walk of 5 falls back
    short = sample_view_indices(np.random.default_rng(0), 5, covis, 0.25)
    assert len(short) == 5 and len(set(short.tolist())) <= 4  # MapAnything: redrawn with replacement from the walk


def test_benchmark_sets_follow_mapanything_seeds():
    root = ensure_mini("ff3d-mini")
    scenes = [root / n for n in (root / "splits" / "test.txt").read_text().split()]
    sets = benchmark_sets(scenes, 2, 0.25)
    assert len(sets) == 10 * len(scenes)
    covis = np.load(next((scenes[1] / "covisibility" / "v0").glob("*.npy")))
    s, r, views = sets[10 + 3]  # scene 1, repetition 3: default_rng(777 + 3 + 1)
    assert (s, r) == (1, 3)
    assert np.array_equal(views, sample_view_indices(np.random.default_rng(BENCHMARK_SEED + 4), 2, covis, 0.25))
    assert np.array_equal(random_walk(np.random.default_rng(5), covis, 2, 0.25),
                          random_walk(np.random.default_rng(5), covis, 2, 0.25))


def test_crop_resize_keeps_projection_consistent():
    K = np.array([[100.0, 0, 79.5], [0, 100.0, 63.5], [0, 0, 1]])
    depth = np.ones((128, 160), np.float32)
    frame = crop_resize(Frame("f", np.zeros((128, 160, 3), np.uint8), depth, K, np.eye(4)), (128, 96))
    assert frame.rgb.shape == (96, 128, 3) and frame.depth.shape == (96, 128)
    # scale 0.8 (+1e-8): 160×128 → 128×102, centre crop of 3 rows from the top
    assert frame.intrinsics[0, 0] == pytest.approx(80.0) and frame.intrinsics[0, 2] == pytest.approx(63.5)
    assert frame.intrinsics[1, 2] == pytest.approx(63.5 * 0.8 + 0.5 * 0.8 - 0.5 - 3)


# ---------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------
FAST = {"epochs": 2, "sets_per_scene": 4}


@pytest.mark.parametrize("backbone", ["pixio-tiny", "pixelbert-r18"])
def test_ff3d_runs_on_mini_for_a_vit_and_a_cnn(tmp_path, backbone):
    rec = evaluate(backbone, "ff3d", weights="random", data="mini", params=FAST, out=tmp_path).record
    assert rec.status == "ok" and rec.task["label"] == "ff3d/probe/wai/2"
    metrics = {m["name"]: m["value"] for m in rec.metrics}
    assert set(metrics) == {"metric_scale_abs_rel", "pointmaps_abs_rel", "pointmaps_inlier_thres_103", "pose_ate_rmse",
                            "pose_auc_5", "z_depth_abs_rel", "z_depth_inlier_thres_103", "ray_dirs_err_deg"}
    assert len(rec.per_sample["pointmaps_abs_rel"]) == 40 == rec.selected["test_sets"]  # 4 test scenes × 10 sets
    assert rec.selected["grid"] == ([12, 16] if backbone == "pixio-tiny" else [3, 4])


def test_a_monocular_probe_reports_points_and_depth(tmp_path):
    rec = evaluate("pixio-tiny", "ff3d", weights="random", data="mini", params={**FAST, "views": 1}, out=tmp_path).record
    names = {m["name"] for m in rec.metrics}
    assert "pointmaps_abs_rel" in names and "z_depth_abs_rel" in names and "pose_auc_5" not in names


@pytest.mark.slow
def test_the_probe_learns_from_its_input(tmp_path):
    """An oracle input (each patch's GT depth and rays) beats random features, with the paired interval."""
    from evalsuite.contracts import Preprocess
    from tasks.ff3d import protocols as P
    from tasks.ff3d.data import scene_list

    cfg = TASKS.get("ff3d").resolve(FAST, mini=True)
    p, ctx = cfg.params, mini_ctx("ff3d-mini", tmp_path / "work")
    size = P.benchmark_size(p, 8)
    pre = Preprocess(size=(96, 128))

    def frames(split):
        return P.Frames(scene_list(ctx.data_root, split), "depth", size, pre.mean, pre.std)

    def oracle(f: P.Frames) -> torch.Tensor:
        rows = []
        for i in range(len(f)):
            geo = camera_geometry(f.frame(i))
            cells = np.concatenate([geo["points_cam"], geo["rays"]], -1).reshape(12, 8, 16, 8, 6).mean((1, 3))
            rows.append(torch.from_numpy(cells.reshape(192, 6)).repeat(1, 8))
        return torch.stack(rows).half()

    scores = {}
    for name in ("oracle", "random"):
        train, test = frames("train"), frames("test")
        train_feats = oracle(train) if name == "oracle" else torch.randn(len(train), 192, 48).half()
        test_feats = oracle(test) if name == "oracle" else torch.randn(len(test), 192, 48).half()
        torch.manual_seed(0)
        probe = P.MultiViewProbe(48, 0, (12, 16), 8, p.dim, p.blocks, p.heads)
        from evalsuite import engine

        sets = P.TrainSets(train, train_feats, p.replace(epochs=6), 0)
        iters = 6 * (len(sets) // 8)
        model = engine.train(P.probe_model(probe), sets, collate=P.collate, batch_size=8, iters=iters, lr=p.lr,
                             weight_decay=p.weight_decay, schedule=engine.Schedule("cosine", iters), work_dir=tmp_path / name,
                             seed=0)
        result = P.evaluate(model.probe, test, test_feats, benchmark_sets(test.scenes, 2, 0.25), ctx)
        scores[name] = [s["z_depth_abs_rel"] for s in result]
    delta, lo, hi = paired_bootstrap(scores["random"], scores["oracle"])
    assert delta < 0 and hi < 0, (delta, lo, hi)  # the oracle's depth error is lower, significantly


# ---------------------------------------------------------------------------------------
# Bad input: one actionable line
# ---------------------------------------------------------------------------------------
def broken_copy(tmp_path, damage) -> str:
    root = tmp_path / "wai"
    shutil.copytree(ensure_mini("ff3d-mini"), root)
    (root / "manifest.json").unlink()
    scene = root / (root / "splits" / "test.txt").read_text().split()[0]
    damage(scene)
    return root


def nan_pose(scene):
    meta = json.loads((scene / "scene_meta.json").read_text())
    meta["frames"][0]["transform_matrix"][0][0] = float("nan")
    (scene / "scene_meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (lambda scene: (scene / "scene_meta.json").unlink(), "has no scene_meta.json"),
    (lambda scene: next((scene / "depth").iterdir()).unlink(), "depth file"),
    (nan_pose, "non-finite camera pose"),
])
def test_broken_scenes_are_one_line(tmp_path, damage, message):
    from typer.testing import CliRunner

    from evalsuite.cli import app

    root = broken_copy(tmp_path, damage)
    result = CliRunner().invoke(app, ["run", "-b", "pixio-tiny", "-t", "ff3d", "--weights", "random", "--data-root", str(root),
                                      "-p", "dataset=wai", "-p", "resolution=128,96", "-p", "epochs=1",
                                      "--out", str(tmp_path / "runs")])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not list((tmp_path / "runs").rglob("*.json")) or all("failed" in p.name for p in (tmp_path / "runs").rglob("*.json"))


def test_more_views_than_frames_is_refused(tmp_path):
    from evalsuite.runner import RunFailed

    with pytest.raises(RunFailed, match="has 6 frames, fewer than views=9"):
        evaluate("pixio-tiny", "ff3d", weights="random", data="mini", params={**FAST, "views": 9}, out=tmp_path)


def test_mini_scene_meta_is_in_the_wai_layout():
    root = ensure_mini("ff3d-mini")
    meta = json.loads((root / "train_0000" / "scene_meta.json").read_text())
    assert meta["camera_convention"] == "opencv" and set(meta["frames"][0]) >= {"image", "depth", "transform_matrix", "fl_x"}
    assert (root / "train_0000" / "covisibility" / "v0" / "pairwise_covisibility--6x6.npy").is_file()
