"""Robot policy task: the rollout harness (expert ≥ 90 %, zero action 0 %, BC on privileged state),
reproducible demonstrations, the camera's orientation, CortexBench's pieces, the mini run and bad input."""

import contextlib
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch

from evalsuite.registry import TASKS
from evalsuite.runner import RunFailed, evaluate

pytest.importorskip("metaworld", reason="the robot extra (pip install -e '.[robot]') is part of the test install")

from tasks.robot.policy import BatchNormMLP, HistoryBuffer, demo_inputs, fuse, rollout
from tasks.robot.protocols import evaluations, load_expert_pickle
from tasks.robot.sim import HELD_OUT, Camera, Env, expert, record_demo

pytestmark = pytest.mark.extra  # needs the robot (metaworld) or slurm (submitit) extra

TASK = "button-press-topdown"
HORIZON = 100


@contextlib.contextmanager
def quiet():
    """MetaWorld's experts warn that their actions exceed [-1, 1] (the environment clips them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def envs(n: int, camera: Camera | None = None) -> list[Env]:
    return [Env(TASK, 0, HELD_OUT + k, camera) for k in range(n)]


def test_the_scripted_expert_succeeds_and_a_zero_policy_fails_through_the_same_rollouts():
    pool = envs(10)
    experts = [expert(TASK) for _ in pool]
    try:
        with quiet():
            solved = rollout(pool, lambda obs, images, t: np.stack([e.get_action(o) for e, o in zip(experts, obs)]), HORIZON)
        idle = rollout(pool, lambda obs, images, t: np.zeros((len(obs), 4)), HORIZON)
    finally:
        for env in pool:
            env.close()
    assert np.mean(solved) >= 0.9 and np.mean(idle) == 0.0


def test_demonstrations_are_bit_identical_for_a_seed():
    with quiet():
        a = record_demo(TASK, 0, 3, Camera("top_cap2", 64), 30)
        b = record_demo(TASK, 0, 3, Camera("top_cap2", 64), 30)
        c = record_demo(TASK, 0, 4, Camera("top_cap2", 64), 30)
    for field in ("images", "proprio", "states", "actions"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.states, c.states)  # another variation, another layout
    assert a.images.shape == (30, 64, 64, 3) and a.proprio.shape == (30, 4) and np.array_equal(a.proprio, a.states[:, :4])


def test_the_corner_camera_is_turned_upright():
    import mujoco

    env = Env(TASK, 0, 0, Camera("corner", 96))
    try:
        _, ours = env.reset()
        model, data = env.env.model, env.env.data
        raw = mujoco.Renderer(model, 96, 96)
        view = mujoco.MjvCamera()
        view.type, view.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner")
        raw.update_scene(data, camera=view)
        raw.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = raw.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        assert np.array_equal(ours, raw.render()[::-1, ::-1])  # v3's corner image, rotated by 180°
        raw.enable_segmentation_rendering()
        raw.update_scene(data, camera=view)
        segmentation = raw.render()[::-1, ::-1]  # as our image shows it
        raw.close()
        bodies = model.geom_bodyid[np.clip(segmentation[..., 0], 0, None)]
        is_geom = segmentation[..., 1] == mujoco.mjtObj.mjOBJ_GEOM
        row = lambda name: np.nonzero(is_geom & (bodies == model.body(name).id))[0].mean()
        assert row("right_hand") < row("tablelink")  # upright: the gripper above the table
    finally:
        env.close()


def test_cortexbench_fusion_history_policy_and_evaluation_epochs():
    e = torch.arange(12.0).view(4, 3)  # 4 frames of 3-d embeddings
    inputs = demo_inputs(e, torch.zeros(4, 4))
    assert torch.equal(inputs[0, :9], torch.cat([torch.zeros(6), e[0]]))  # the first frame fills the history
    assert torch.equal(inputs[3, :9], torch.cat([e[2] - e[1], e[3] - e[2], e[3]]))
    buffer = HistoryBuffer()
    assert torch.equal(buffer.push(e[:1]), fuse(e[[0, 0, 0]][None]))
    assert torch.equal(buffer.push(e[1:2]), fuse(e[[0, 0, 1]][None]))
    torch.manual_seed(0)
    policy, default = BatchNormMLP(10), torch.nn.Linear(256, 4)
    assert isinstance(policy.net[0], torch.nn.BatchNorm1d) and len([m for m in policy.net if isinstance(m, torch.nn.Linear)]) == 4
    assert policy.net[-1].weight.abs().max() < default.weight.abs().max() * 0.05  # × 0.01 at init
    p = TASKS.get("metaworld").resolve(protocol="bc").params
    assert evaluations(p) == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 99]
    assert (p.epochs, p.batch_size, p.lr, p.demos, p.eval_episodes, p.horizon, p.seeds, p.camera) == (
        100, 256, 1e-3, 25, 25, 500, 3, "top_cap2")


@pytest.mark.slow
def test_bc_on_privileged_state_solves_the_mini_task(tmp_path):
    """The BC pipeline itself works: with MetaWorld's state as input it reaches high success."""
    rec = evaluate("mae-tiny", "metaworld", weights="random", data="mini", params={"observation": "state"},
                   out=tmp_path).record
    success = {m["name"]: m["value"] for m in rec.metrics}
    assert success["success"] >= 80 and rec.selected["expert_success"][TASK] == 1.0


@pytest.mark.slow
def test_metaworld_runs_on_mini_with_a_record_per_task_and_the_average(tmp_path):
    rec = evaluate("pixio-tiny", "metaworld", weights="random", data="mini", params={"eval_episodes": 2},
                   out=tmp_path).record
    names = {m["name"] for m in rec.metrics}
    assert {"success", "success_max", f"success_{TASK}"} <= names and rec.task["label"] == "metaworld/bc"
    assert len(rec.per_sample["success"]) == 2 and set(rec.per_sample["success"]) <= {0.0, 100.0}
    assert rec.data["source"] == "mini" and rec.data["simulator"]["mujoco"] == "3.3.0"
    definition = next(m["definition"] for m in rec.metrics if m["name"] == "success_max")
    assert "optimistic" in definition


def test_expert_pickles_load_numpy_only(tmp_path):
    path = tmp_path / f"{TASK}.pickle"
    paths = [{"images": np.zeros((5, 8, 8, 3), np.uint8), "actions": np.ones((5, 4)),
              "env_infos": {"gripper_proprio": np.zeros((5, 4)), "success": np.array([0, 0, 0, 1, 1])}}]
    path.write_bytes(pickle.dumps(paths))
    (demo,) = load_expert_pickle(path)
    assert demo.images.shape == (5, 8, 8, 3) and demo.success and demo.actions.dtype == np.float32

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps([{"images": Evil()}]))
    with pytest.raises(pickle.UnpicklingError, match="refused to unpickle builtins.print"):
        load_expert_pickle(path)


def test_bad_robot_input_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Did you mean 'drawer-open'"):
        evaluate("pixio-tiny", "metaworld", weights="random", data="mini", params={"tasks": "drawer-opn"}, out=tmp_path)
    monkeypatch.setitem(sys.modules, "metaworld", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"pip install -e '.\[robot\]'"):
        evaluate("pixio-tiny", "metaworld", weights="random", data="mini", out=tmp_path)


@pytest.mark.slow  # reuses the demonstrations an earlier slow test recorded
def test_a_rollout_that_raises_fails_the_run(tmp_path, monkeypatch):
    def broken(self, action):
        raise RuntimeError("simulation unstable")

    monkeypatch.setattr(Env, "step", broken)
    with pytest.raises(RunFailed, match="simulation unstable"):
        evaluate("mae-tiny", "metaworld", weights="random", data="mini", params={"observation": "state"}, out=tmp_path)
    assert not any(p.name.endswith(".json") and not p.name.endswith(".failed.json") for p in tmp_path.rglob("*"))
