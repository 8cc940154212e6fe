"""The feed-forward 3D protocol: a multi-view probe trained on frozen features of the dataset's train
scenes, scored on MapAnything's dense N-view benchmark sets of its test scenes (``evalsuite run -t
ff3d --views N``). Data: WAI scenes with ``splits/{train,test}.txt`` (or MapAnything's scene lists);
real datasets are looked up by their MapAnything names (``scannetppv2``, ``eth3d``, ``tav2_wb``).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from evalsuite import engine
from evalsuite.cache import cached_features
from evalsuite.contracts import Backbone, DataSource, Metric, Preprocess, RunContext, Task, TaskConfig, TaskOutput
from evalsuite.data import folder_source, within
from evalsuite.params import ParamError, Params, param
from evalsuite.sampling import seeded

from .data import (
    Frame,
    benchmark_sets,
    camera_geometry,
    covisibility,
    crop_resize,
    frame_key,
    load_frame,
    sample_view_indices,
    scene_list,
    scene_meta,
)
from .metrics import HIGHER_IS_BETTER, KEYS, POSE_KEYS, set_metrics
from .probe import MultiViewProbe, metric_outputs, probe_loss

# MapAnything's per-dataset benchmark settings (configs/dataset/*_wai/test/default.yaml, the WAI loaders)
DATASETS = {
    "wai": {"threshold": 0.25, "depth": "depth", "square": False},  # any WAI folder (the mini world)
    "scannetppv2": {"threshold": 0.25, "depth": "rendered_depth", "square": False},
    "eth3d": {"threshold": 0.025, "depth": "depth", "square": False},
    "tav2_wb": {"threshold": 0.25, "depth": "depth", "square": True, "clean": "tav2"},
}


class FF3DTask(Task):
    def data_source(self, data, data_root, mini_size, mini_seed, config) -> DataSource | None:
        if data == "mini":
            return super().data_source(data, data_root, mini_size, mini_seed, config)
        return folder_source(config.params.dataset, data_root)  # [data_roots] keys: scannetppv2, eth3d, tav2_wb

    def check_source(self, config, source: DataSource) -> None:
        if source.kind == "mini" and config.params.dataset != "wai":  # never a number labelled eth3d that is not
            raise ParamError(f"dataset={config.params.dataset} names a real MapAnything benchmark, but {source.root} is "
                             "the generated mini world (a generic WAI folder): use dataset=wai, its default")


FF3D = FF3DTask("ff3d", version=1, family="3d", dataset="scannetppv2", mini_dataset="ff3d-mini", tolerance=0.005,
                quickstart=({"protocol": "probe", "views": 2},),
                description="feed-forward multi-view 3D from frozen features: MapAnything's dense N-view metrics")


@dataclass(frozen=True)
class ProbeParams(Params):
    dataset: str = param("scannetppv2", "MapAnything dataset (its covisibility threshold, depth and resolution)",
                         choices=tuple(DATASETS))
    views: int = param(2, "views per set (MapAnything: 2, 4, 8, 16, 24, 32, 50, 100; 1 = monocular)", min=1)
    resolution: tuple[int, int] = param((518, 336), "W×H, each rounded down to a multiple of the patch (518×336 at "
                                        "patch 14, 512×336 at 16); square for tav2_wb", min=1, max=2048)
    dim: int = param(256, "probe width", min=8)
    blocks: int = param(2, "frame + global attention pairs", min=1, max=2)
    heads: int = param(8, "attention heads", min=1)
    epochs: int = param(20, "epochs over the train scenes", min=1)
    sets_per_scene: int = param(10, "view sets drawn per train scene and epoch (seeded random walks)", min=1)
    batch_size: int = param(8, "view sets per step", min=1)
    lr: float = param(1e-4, "AdamW learning rate", min=0, min_exclusive=True)
    weight_decay: float = param(0.05, "AdamW weight decay", min=0)
    warmup: float = param(0.05, "share of iterations with linear warm-up", min=0, max=1, max_exclusive=True)

    def check(self) -> None:
        if self.dim % self.heads or self.dim % 4:
            raise ParamError(f"dim={self.dim} must be a multiple of 4 and of heads={self.heads}")


PROBE_MINI = {"dataset": "wai", "resolution": (128, 96), "dim": 64, "blocks": 1, "heads": 4, "epochs": 15,
              "sets_per_scene": 8, "lr": 1e-3}


# ---------------------------------------------------------------------------------------
# Frames: resized as MapAnything, normalised for the backbone, GT geometry on demand
# ---------------------------------------------------------------------------------------
def benchmark_size(p, patch: int) -> tuple[int, int]:
    W, H = p.resolution
    if DATASETS[p.dataset]["square"]:
        H = W
    W, H = W // patch * patch, H // patch * patch
    if not W or not H:
        raise ValueError(f"resolution {p.resolution} is smaller than the patch {patch}")
    return W, H


class Frames(Dataset):
    """Every frame of ``scenes`` at the benchmark resolution: item i → (normalised image, i)."""

    def __init__(self, scenes: list[Path], depth: str, size: tuple[int, int], mean, std, clean: str | None = None):
        self.scenes, self.depth, self.size, self.clean = scenes, depth, size, clean
        self.metas = [scene_meta(s) for s in scenes]
        self.rows = [(s, f) for s, meta in enumerate(self.metas) for f in range(len(meta["frames"]))]
        self.first = {s: next(i for i, (t, _) in enumerate(self.rows) if t == s) for s in range(len(scenes))}
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.frame = functools.lru_cache(maxsize=512)(self._frame)  # resized frames, reused across view sets
        for s, meta in enumerate(self.metas):  # one line for a missing file, before any work
            key = frame_key(meta, depth)
            for f in meta["frames"]:
                if key not in f or not (scenes[s] / f[key]).is_file():
                    raise FileNotFoundError(f"{scenes[s].name}/{f.get('frame_name', f.get('image'))}: depth file "
                                            f"{f.get(key)} not found")

    def __len__(self) -> int:
        return len(self.rows)

    def _frame(self, row: int) -> Frame:
        s, f = self.rows[row]
        frame = load_frame(self.scenes[s], self.metas[s], f, self.depth)
        if self.clean == "tav2":
            frame = clean_tav2(frame, self.scenes[s], self.metas[s]["frames"][f])
        return crop_resize(frame, self.size)

    def row(self, scene: int, view: int) -> int:
        return self.first[scene] + int(view)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.frame(i).rgb.copy()).permute(2, 0, 1).float() / 255
        return (image - self.mean) / self.std, i


def clean_tav2(frame: Frame, scene: Path, entry: dict) -> Frame:
    """MapAnything's TAv2-WB loader: depth above its 95th percentile (over all pixels, zeros included)
    and outside the MoGe-2 mask (``pred_mask/moge2``, nearest-resized) is invalid."""
    import cv2
    from PIL import Image

    depth = frame.depth.copy()
    depth[depth > np.percentile(depth, 95)] = 0
    if "moge2_mask" not in entry:
        raise FileNotFoundError(f"{scene.name}/{frame.name}: TAv2-WB needs the MoGe-2 mask (moge2_mask)")
    mask = np.asarray(Image.open(within(scene, entry["moge2_mask"], scene / "scene_meta.json"))).astype(int)
    mask = cv2.resize(mask.astype(np.uint8), (depth.shape[1], depth.shape[0]), interpolation=cv2.INTER_NEAREST)
    return Frame(frame.name, frame.rgb, np.where(mask > 0, depth, 0).astype(np.float32), frame.intrinsics, frame.cam2world)


def set_ground_truth(frames: Frames, rows: list[int]) -> dict[str, np.ndarray | list]:
    """GT of one view set, in view 0's camera frame (metric): points, camera points, rays, valid, poses."""
    views = [frames.frame(r) for r in rows]
    to_first = np.linalg.inv(views[0].cam2world)
    out = {"points": [], "points_cam": [], "rays": [], "valid": [], "poses": []}
    for v in views:
        geo = camera_geometry(v)
        pose = to_first @ v.cam2world
        out["points"].append((geo["points_cam"] @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32))
        out["points_cam"].append(geo["points_cam"])
        out["rays"].append(geo["rays"])
        out["valid"].append(geo["valid"])
        out["poses"].append(pose)
    return out


# ---------------------------------------------------------------------------------------
# Features: the family's dense blocks, concatenated along channels, cached per frame
# ---------------------------------------------------------------------------------------
def probe_layers(backbone: Backbone) -> tuple[int, ...]:
    """The family's dense blocks; a CNN's stages differ in resolution, so it gives its last stage."""
    if backbone.meta.num_cls_tokens == 0 and backbone.meta.family == "pixelbert":
        return (backbone.meta.depth - 1,)
    return tuple(backbone.meta.default_layers)


def tokens(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """B×(n_cls + h·w)×(D·blocks): each block's CLS and patch tokens (final norm on), blocks side by side."""
    feats = backbone.forward_features(images, layers=probe_layers(backbone), norm=True)
    per_block = [torch.cat([c, p.flatten(2).transpose(1, 2)], dim=1) for p, c in zip(feats.patch, feats.cls)]
    return torch.cat(per_block, dim=2)


# ---------------------------------------------------------------------------------------
# Training on view sets of the train scenes
# ---------------------------------------------------------------------------------------
class TrainSets(Dataset):
    """Item (index, epoch): a view set of train scene index mod n, drawn by a seeded random walk."""

    def __init__(self, frames: Frames, feats: torch.Tensor, p, seed: int):
        self.frames, self.feats, self.p, self.seed = frames, feats, p, seed
        self.covis = [covisibility(s) for s in frames.scenes]
        missing = [s.name for s, c in zip(frames.scenes, self.covis) if c is None]
        if missing:
            raise FileNotFoundError(f"scene {missing[0]} has no covisibility matrix (covisibility/v0/*.npy)")

    def __len__(self) -> int:
        return len(self.frames.scenes) * self.p.sets_per_scene

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        scene = index % len(self.frames.scenes)
        rng = np.random.default_rng(int(seeded(self.seed, epoch, index, 31).initial_seed()))
        views = sample_view_indices(rng, self.p.views, self.covis[scene], DATASETS[self.p.dataset]["threshold"])
        rows = [self.frames.row(scene, v) for v in views]
        return as_tensors(self.feats, rows, set_ground_truth(self.frames, rows))


def as_tensors(feats: torch.Tensor, rows: list[int], gt: dict) -> dict[str, torch.Tensor]:
    poses = np.stack(gt["poses"])
    return {"tokens": feats[rows].float(), "points": torch.from_numpy(np.stack(gt["points"])),
            "points_cam": torch.from_numpy(np.stack(gt["points_cam"])), "rays": torch.from_numpy(np.stack(gt["rays"])),
            "valid": torch.from_numpy(np.stack(gt["valid"])), "R": torch.from_numpy(poses[:, :3, :3]).float(),
            "t": torch.from_numpy(poses[:, :3, 3]).float()}


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def probe_model(probe: MultiViewProbe):
    from mmengine.model import BaseModel

    class ProbeModel(BaseModel):
        def __init__(self):
            super().__init__()
            self.probe = probe

        def forward(self, tokens, mode: str = "tensor", **gt):
            out = self.probe(tokens)
            if mode != "loss":
                return out
            return {"loss": probe_loss(out, gt)}

    return ProbeModel()


@torch.inference_mode()
def evaluate(probe: MultiViewProbe, frames: Frames, feats: torch.Tensor, sets, ctx: RunContext) -> list[dict]:
    probe.eval()
    scores = []
    for s, r, views in sets:
        rows = [frames.row(s, v) for v in views]
        with ctx.autocast():
            out = probe(feats[rows].float()[None].to(ctx.device))
        pred = {k: [x.float().cpu().numpy() for x in v[0]] for k, v in metric_outputs(out).items()}
        gt = set_ground_truth(frames, rows)
        result = set_metrics(gt, pred)
        bad = [k for k, v in result.items() if not np.isfinite(v)]
        if bad:  # MapAnything's np.mean would make the whole dataset NaN; we say where
            empty = [frames.frame(row).name for row, m in zip(rows, gt["valid"]) if not m.any()]
            raise ValueError(f"{frames.scenes[s].name}, set {r}: {bad} are NaN (views without a valid pixel: {empty}), as "
                             "in MapAnything, whose dataset mean then is NaN")
        scores.append(result)
    return scores


@FF3D.protocol("probe", ProbeParams, primary_metric="pointmaps_abs_rel", higher_is_better=False,
               selection_split="none (last iteration)", report_split="test scenes (MapAnything's 10 sets per scene)",
               mini=PROBE_MINI, variant_keys=("dataset", "views"),
               leaderboard_metrics=("metric_scale_abs_rel", "pointmaps_inlier_thres_103", "pose_auc_5", "z_depth_abs_rel",
                                    "z_depth_inlier_thres_103"),
               description="multi-view probe (frame/global attention) on frozen features; MapAnything's dense N-view "
                           "metrics on its benchmark view sets")
def probe_protocol(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
    p = cfg.params
    settings = DATASETS[p.dataset]
    root = ctx.data_root
    train_scenes, test_scenes = scene_list(root, "train"), scene_list(root, "test")
    for scene in (*train_scenes, *test_scenes):
        frames = len(scene_meta(scene)["frames"])
        if frames < p.views:  # MapAnything would repeat frames: a frame paired with itself scores 90°
            raise ValueError(f"scene {scene.name} has {frames} frames, fewer than views={p.views}: choose views ≤ {frames} "
                             "(evalsuite does not repeat frames to fill a set)")
    size = benchmark_size(p, backbone.meta.patch_size)
    pre = backbone.meta.preprocess
    train, test = (Frames(s, settings["depth"], size, pre.mean, pre.std, settings.get("clean"))
                   for s in (train_scenes, test_scenes))
    resized = Preprocess(size=(size[1], size[0]), mean=pre.mean, std=pre.std, interpolation="bicubic", resize="squash")
    reducer = f"ff3d-tokens-v1-{'-'.join(map(str, probe_layers(backbone)))}"
    train_feats, _ = cached_features(backbone, train, ctx, tokens, reducer, "train", resized)
    test_feats, _ = cached_features(backbone, test, ctx, tokens, reducer, "test", resized)
    patch = backbone.meta.patch_size
    grid = (size[1] // patch, size[0] // patch)
    n_cls = train_feats.shape[1] - grid[0] * grid[1]
    probe = MultiViewProbe(train_feats.shape[2], n_cls, grid, patch, p.dim, p.blocks, p.heads)
    sets = TrainSets(train, train_feats, p, ctx.seed)
    batch = min(p.batch_size, len(sets))
    iters = engine.iterations(p.epochs, len(sets) // batch, len(sets), batch)
    schedule = engine.Schedule("cosine", iters, warmup_iters=int(p.warmup * iters), warmup_ratio=0.0)
    model = engine.train(probe_model(probe).to(ctx.device), sets, collate=collate, batch_size=batch, iters=iters, lr=p.lr,
                         weight_decay=p.weight_decay, schedule=schedule, work_dir=ctx.work_dir or tempfile.mkdtemp(),
                         seed=ctx.seed, resume=True, checkpoint_interval=ctx.checkpoint_interval, amp_dtype=ctx.amp_dtype)
    scores = evaluate(model.probe, test, test_feats, benchmark_sets(test_scenes, p.views, settings["threshold"]), ctx)
    keys = [k for k in KEYS if k in scores[0]]
    metrics = [Metric(k, float(np.mean([s[k] for s in scores])), "test", k in HIGHER_IS_BETTER,
                      primary=k == cfg.primary_metric) for k in keys]
    per_sample = {k: [s[k] for s in scores] for k in keys if k not in POSE_KEYS or p.views > 1}
    return TaskOutput(metrics, {"resolution": list(size), "grid": list(grid), "layers": list(probe_layers(backbone)),
                                "iterations": iters, "train_scenes": len(train_scenes), "test_scenes": len(test_scenes),
                                "test_sets": len(scores), "selection": "last iteration"}, per_sample=per_sample)
