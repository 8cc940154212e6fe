"""Robot policy learning (CortexBench's MetaWorld behaviour cloning) in a live simulator:
``evalsuite run -b B -t metaworld``.

The data is a simulator: the run's identity is the simulator's package versions, the tasks, the
benchmark seed and variations, the camera and the demonstrations' manifest. Demonstrations are
recorded once (scripted experts, or CortexBench/R3M expert pickles given with ``demo_dir``) and
cached on disk; their frame embeddings are extracted once and cached like any frozen features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from evalsuite.cache import cached_features
from evalsuite.contracts import Backbone, DataSource, Metric, RunContext, Task, TaskConfig, TaskOutput
from evalsuite.data import folder_identity, read_manifest, verify_manifest
from evalsuite.features import stage
from evalsuite.fileio import atomic_directory
from evalsuite.params import ParamError, Params, param
from evalsuite.safeload import load_restricted_pickle
from evalsuite.sampling import seeded

from .policy import BatchNormMLP, HistoryBuffer, demo_inputs, rollout
from .sim import CAMERAS, HELD_OUT, Camera, Demo, Env, RobotExtraMissing, check_tasks, metaworld, record_demo, versions

CORTEXBENCH_TASKS = ("assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer")


@dataclass(frozen=True)
class BCParams(Params):
    tasks: tuple[str, ...] = param(CORTEXBENCH_TASKS, "MetaWorld v3 tasks (without -v3)")
    benchmark_seed: int = param(0, "seed of metaworld.MT1's 50 variations per task", min=0)
    demos: int = param(25, "demonstrations per task (variations 0..demos−1)", min=1, max=HELD_OUT)
    demo_dir: str = param("", "a folder of CortexBench/R3M expert pickles (<task>.pickle); empty: scripted experts")
    horizon: int = param(500, "steps per demonstration and rollout; success is read at the last one", min=1, max=500)
    camera: str = param("top_cap2", "top_cap2 (CortexBench's, reproduced) | corner (v3's, turned upright)", choices=CAMERAS)
    image_size: int = param(256, "rendered square side (the family's transform then applies)", min=16)
    observation: str = param("image", "image: frozen embeddings + proprio; state: MetaWorld's 39-d state (a check of "
                                      "the BC pipeline, not a backbone score)", choices=("image", "state"))
    epochs: int = param(100, "epochs over the demonstration steps", min=1)
    batch_size: int = param(256, "BC batch", min=1)
    lr: float = param(1e-3, "Adam learning rate", min=0, min_exclusive=True)
    eval_every: int = param(5, "evaluate after epochs k·eval_every (k ≥ 1) and after the last", min=1)
    eval_episodes: int = param(25, "rollouts per evaluation, on held-out variations 25, 26, …", min=1, max=25)
    seeds: int = param(3, "policy seeds SEED … SEED+N−1 (mean ± std)", min=1)

    def check(self) -> None:
        if not self.tasks:
            raise ParamError("tasks is empty")


BC_MINI = {"tasks": ("button-press-topdown",), "demos": 8, "horizon": 100, "image_size": 128, "epochs": 20,
           "eval_every": 20, "eval_episodes": 6, "seeds": 1}


# ---------------------------------------------------------------------------------------
# The simulator as a data source: demonstrations recorded once, with a manifest
# ---------------------------------------------------------------------------------------
def demo_cache_root() -> Path:
    from evalsuite.mini import cache_root

    return cache_root().parent / "robot"


class MetaWorldTask(Task):
    def missing_extra(self) -> str | None:
        if (missing := super().missing_extra()) is not None:
            return missing
        try:
            metaworld()  # installed but broken (another mujoco, say) is missing too
        except RobotExtraMissing as exc:
            return str(exc)
        return None

    def data_source(self, data, data_root, mini_size, mini_seed, config) -> DataSource:
        from evalsuite.data import world_name

        if data_root is not None:
            raise ValueError("metaworld runs a simulator: no --data-root (pass -p demo_dir=DIR for expert pickles)")
        p = config.params
        check_tasks(p.tasks)  # the extra is installed, the names exist (did-you-mean)
        seed = p.benchmark_seed + (mini_seed if data == "mini" else 0)
        spec = {"simulator": versions(), "tasks": list(p.tasks), "benchmark_seed": seed, "demo_variations": list(range(p.demos)),
                "camera": p.camera, "image_size": p.image_size, "horizon": p.horizon,
                "demo_source": demo_source_identity(p)}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        root, demos = ensure_demos(demo_cache_root() / key[:16], spec, p)
        identity = hashlib.sha256(json.dumps({**spec, "demos": demos}, sort_keys=True).encode())
        kind = "mini" if data == "mini" else "real"
        return DataSource(kind, "metaworld", root, identity.hexdigest(), world=world_name(mini_size, mini_seed) if data == "mini"
                          else None, details={"simulator": spec["simulator"], "tasks": list(p.tasks), "benchmark_seed": seed})


def demo_source_identity(p) -> str:
    if not p.demo_dir:
        return "scripted experts (metaworld.policies)"
    return folder_identity(Path(p.demo_dir))  # the content of every file (hashes cached by size and mtime)


def ensure_demos(root: Path, spec: dict, p) -> tuple[Path, str]:
    """Demonstrations of every task as ``<task>.npz``, and their identity computed from the files
    (verified against their manifest when reused)."""
    from evalsuite.mini import write_manifest

    manifest = read_manifest(root)
    if manifest is not None:
        return root, verify_manifest(root, manifest)
    camera = Camera(p.camera, p.image_size)
    with atomic_directory(root) as tmp:
        for task in p.tasks:
            if p.demo_dir:
                demos = load_expert_pickle(Path(p.demo_dir) / f"{task}.pickle")[: p.demos]
            else:
                demos = []
                with stage(f"{task}: recording {p.demos} expert demonstrations", p.demos) as advance:
                    for v in range(p.demos):
                        demos.append(record_demo(task, spec["benchmark_seed"], v, camera, p.horizon))
                        advance()
            np.savez_compressed(tmp / f"{task}.npz", images=np.stack([d.images for d in demos]),
                                proprio=np.stack([d.proprio for d in demos]), states=np.stack([d.states for d in demos]),
                                actions=np.stack([d.actions for d in demos]), success=np.array([d.success for d in demos]))
        (tmp / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        identity = write_manifest(tmp, {"name": "metaworld-demos", "mini": False})
    return root, identity


def load_expert_pickle(path: Path) -> list[Demo]:
    """CortexBench's / R3M's expert paths (a list of dicts: ``images`` T×H×W×3, ``actions`` T×4,
    ``observations`` T×39 and/or ``env_infos['gripper_proprio']`` T×4, ``env_infos['success']``)."""
    if not path.is_file():
        raise FileNotFoundError(f"expert pickle {path} not found (expected <task>.pickle)")
    paths = load_restricted_pickle(path)
    demos = []
    for k, entry in enumerate(paths):
        infos = entry.get("env_infos", {})
        states = np.asarray(entry.get("observations", np.zeros((len(entry["actions"]), 39))), dtype=np.float32)
        proprio = np.asarray(infos.get("gripper_proprio", states[:, :4]), dtype=np.float32)
        if "images" not in entry:
            raise ValueError(f"{path}: path {k} has no images")
        success = bool(np.asarray(infos.get("success", [0]))[-1])
        demos.append(Demo(np.asarray(entry["images"], dtype=np.uint8), proprio, states, np.asarray(entry["actions"],
                                                                                                   dtype=np.float32), success))
    return demos


# ---------------------------------------------------------------------------------------
# Frozen embeddings of the demonstration frames
# ---------------------------------------------------------------------------------------
class DemoFrames(Dataset):
    """Every frame of every demonstration of one task, through the family's transform."""

    def __init__(self, npz: dict, transform):
        self.images, self.transform = npz["images"], transform
        self.n, self.t = self.images.shape[:2]

    def __len__(self) -> int:
        return self.n * self.t

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i // self.t, i % self.t])), i


def global_embedding(model: Backbone, images: torch.Tensor) -> torch.Tensor:
    return model.global_embedding(images)


def embed(backbone: Backbone, images: np.ndarray, transform, ctx: RunContext) -> torch.Tensor:
    batch = torch.stack([transform(Image.fromarray(image)) for image in images]).to(ctx.device)
    with torch.inference_mode(), ctx.autocast():
        out = backbone.global_embedding(batch).float().cpu()
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"{backbone.meta.name} gave non-finite embeddings of rollout frames")
    return out


# ---------------------------------------------------------------------------------------
# Behaviour cloning and evaluation
# ---------------------------------------------------------------------------------------
def evaluations(p) -> list[int]:
    """0-based epochs after which CortexBench evaluates: multiples of eval_every (not 0), and the last."""
    return sorted({e for e in range(p.epochs) if (e % p.eval_every == 0 and e > 0) or e == p.epochs - 1})


def train_and_evaluate(inputs: torch.Tensor, actions: torch.Tensor, p, seed: int, evaluate) -> list[list[bool]]:
    """Train the BC policy; ``evaluate(policy)`` after each evaluation epoch → per-rollout successes."""
    torch.manual_seed(seed)
    policy = BatchNormMLP(inputs.shape[1])
    optimizer = torch.optim.Adam(policy.parameters(), lr=p.lr)
    order = seeded(seed, 41)
    results, due = [], set(evaluations(p))
    for epoch in range(p.epochs):
        policy.train()
        perm = torch.randperm(len(inputs), generator=order)
        for start in range(0, len(perm), p.batch_size):
            rows = perm[start : start + p.batch_size]
            if len(rows) < 2:  # BatchNorm needs two samples
                continue
            loss = torch.nn.functional.mse_loss(policy(inputs[rows]), actions[rows])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"behaviour cloning diverged (loss {loss.item()}) in epoch {epoch}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch in due:
            policy.eval()
            results.append(evaluate(policy))
    return results


def run_task(backbone: Backbone, p, ctx: RunContext, task: str, transform) -> dict:
    npz = dict(np.load(ctx.data_root / f"{task}.npz"))
    n, T = npz["actions"].shape[:2]
    if not npz["success"].any():  # cloning demonstrations that all fail measures nothing but the setup
        source = f"the expert pickles of {p.demo_dir}" if p.demo_dir else "the scripted expert"
        raise ValueError(f"{task}: {source} succeeded in none of its {n} demonstrations of {T} steps (camera {p.camera}); "
                         "behaviour cloning from them would score the setup, not the backbone: give the expert "
                         "more steps (-p horizon, MetaWorld's own limit is 500) or check the task and demo source")
    actions = torch.from_numpy(npz["actions"].reshape(n * T, 4))
    camera = Camera(p.camera, p.image_size)
    if p.observation == "state":
        inputs = torch.from_numpy(npz["states"].reshape(n * T, -1))
    else:
        key = f"metaworld-{task}-{p.camera}-{p.image_size}"
        feats, _ = cached_features(backbone, DemoFrames(npz, transform), ctx, global_embedding, "global-v1", key,
                                   backbone.meta.preprocess_for("bc"))
        feats = feats.float().reshape(n, T, -1)
        proprio = torch.from_numpy(npz["proprio"])
        inputs = torch.cat([demo_inputs(feats[i], proprio[i]) for i in range(n)])

    benchmark_seed = json.loads((ctx.data_root / "spec.json").read_text())["benchmark_seed"]

    def evaluate(policy) -> list[bool]:
        envs = [Env(task, benchmark_seed, HELD_OUT + k, camera if p.observation == "image" else None)
                for k in range(p.eval_episodes)]
        history = HistoryBuffer()

        def act(obs: np.ndarray, images: np.ndarray, t: int) -> np.ndarray:
            if p.observation == "state":
                x = torch.from_numpy(obs.astype(np.float32))
            else:
                x = torch.cat([history.push(embed(backbone, images, transform, ctx)), torch.from_numpy(obs[:, :4]).float()],
                              dim=1)
            with torch.no_grad():
                return policy(x).numpy()

        try:
            with stage(f"{task}: {len(envs)} rollouts of {p.horizon} steps"):
                return rollout(envs, act, p.horizon)
        finally:
            for env in envs:
                env.close()

    return {"expert_success": float(npz["success"].mean()),
            "runs": [train_and_evaluate(inputs, actions, p, seed, evaluate) for seed in range(ctx.seed, ctx.seed + p.seeds)]}


METAWORLD = MetaWorldTask("metaworld", version=1, family="robot", dataset="metaworld", mini_dataset="metaworld",
                          tolerance=5.0, quickstart=({"protocol": "bc"},),
                          requires={"metaworld": "robot", "gymnasium": "robot"},
                          description="robot behaviour cloning from frozen features in MetaWorld v3 (CortexBench's protocol)")


@METAWORLD.protocol("bc", BCParams, primary_metric="success", higher_is_better=True,
                    selection_split="none (final evaluation)", report_split="held-out variations 25–49",
                    mini=BC_MINI, leaderboard_metrics=("success_max",),
                    description="CortexBench BC: fused 3-frame embeddings + proprio, BatchNorm MLP, 100 epochs; success at "
                                "the last step on held-out variations")
def bc_protocol(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
    p = cfg.params
    transform = backbone.meta.preprocess_for("bc").transform()
    metrics, per_rollout, selected = [], [], {"evaluated_after_epochs": evaluations(p), "expert_success": {}}
    finals, maxima = [], []
    for task in p.tasks:
        result = run_task(backbone, p, ctx, task, transform)
        selected["expert_success"][task] = result["expert_success"]
        final = [100 * float(np.mean(run[-1])) for run in result["runs"]]  # per seed: the last evaluation
        best = [max(100 * float(np.mean(r)) for r in run) for run in result["runs"]]  # CortexBench's max over evaluations
        mean, std = float(np.mean(final)), (float(np.std(final, ddof=1)) if len(final) > 1 else None)
        metrics.append(Metric(f"success_{task}", mean, "held-out", True, std=std))
        finals.append(mean)
        maxima.append(float(np.mean(best)))
        per_rollout += (100 * np.mean([run[-1] for run in result["runs"]], axis=0)).tolist()
    metrics.insert(0, Metric("success", float(np.mean(finals)), "held-out", True, primary=True))
    metrics.insert(1, Metric("success_max", float(np.mean(maxima)), "held-out", True,
                             definition="CortexBench's maximum over evaluations during training (optimistic: selected on "
                                        "the reported rollouts)"))
    return TaskOutput(metrics, {**selected, "observation": p.observation}, per_sample={"success": per_rollout})
