"""MetaWorld v3 (maintained, MuJoCo 3.3) as CortexBench uses MetaWorld: fixed task variations, a
recorded camera, scripted-expert demonstrations, and a pool of environments stepped together.

* Variations: ``metaworld.MT1(task, seed).train_tasks[i]`` + ``set_task`` freezes one layout
  (``reset(seed=…)`` is ignored by MetaWorld). Demonstrations use variations 0..demos−1; rollouts use
  the held-out variations 25..49, never a demonstration's.
* Camera: CortexBench's ``top_cap2`` (a camera of R3M's MetaWorld fork, absent in v3) reproduced as a
  free camera aimed at the table (lookat (0, 0.6, 0), distance 0.67082, azimuth −90°, elevation
  −63.435°, fovy 45), upright. v3's ``corner`` cameras render rotated by 180°; ``corner`` is turned
  back upright here. Shadows and reflections are off (4–6× faster on a CPU).
* Rendering is headless through EGL (``MUJOCO_GL=egl``, set when unset).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from evalsuite.environment import prepare_headless_gl

os.environ.setdefault("MUJOCO_GL", "egl")  # before metaworld imports mujoco

CAMERAS = ("top_cap2", "corner")
TOP_CAP2 = {"lookat_body": "tablelink", "distance": 0.670820, "azimuth": -90.0, "elevation": -63.435}
HELD_OUT = 25  # rollouts use MT1 variations 25..49, demonstrations variations 0..24


class RobotExtraMissing(ValueError):
    """The optional simulator is not installed: one line saying which extra brings it."""


def metaworld():
    try:
        import metaworld as mw
        import metaworld.policies
    except ImportError as exc:
        raise RobotExtraMissing("the robot task needs MetaWorld: pip install -e '.[robot]' (metaworld 3.1.1, gymnasium, "
                                f"packaging; {exc})") from None
    return mw


def task_names() -> list[str]:
    """MetaWorld v3 task names without their ``-v3`` suffix."""
    return sorted(name.removesuffix("-v3") for name in metaworld().env_dict.ALL_V3_ENVIRONMENTS)


def check_tasks(tasks: tuple[str, ...]) -> None:
    from evalsuite.params import suggest

    known = task_names()
    for task in tasks:
        if task not in known:
            raise ValueError(f"unknown MetaWorld task {task!r}.{suggest(task, known)} (v3 names without -v3)")


def versions() -> dict[str, str]:
    """The simulator's identity: the packages whose versions change what a rollout does."""
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("metaworld", "mujoco", "gymnasium")}


@dataclass
class Camera:
    name: str
    size: int

    def renderer(self, env):
        import mujoco

        prepare_headless_gl()
        renderer = mujoco.Renderer(env.model, self.size, self.size)
        camera = mujoco.MjvCamera()
        if self.name == "top_cap2":
            camera.type = mujoco.mjtCamera.mjCAMERA_FREE
            camera.distance, camera.azimuth, camera.elevation = TOP_CAP2["distance"], TOP_CAP2["azimuth"], TOP_CAP2["elevation"]
        else:
            camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            camera.fixedcamid = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, self.name)
        return renderer, camera

    def render(self, env, renderer, camera) -> np.ndarray:
        import mujoco

        if self.name == "top_cap2":
            camera.lookat[:] = env.data.body(TOP_CAP2["lookat_body"]).xpos
        renderer.update_scene(env.data, camera=camera)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        image = renderer.render()
        return np.ascontiguousarray(image[::-1, ::-1]) if self.name == "corner" else image  # v3's corner is upside down


@functools.lru_cache(maxsize=16)
def benchmark(name: str, seed: int):
    """``metaworld.MT1(name, seed)``: its 50 variations are a pure function of (name, seed), built once."""
    return metaworld().MT1(name, seed=seed)


class Env:
    """One MetaWorld variation with its renderer: ``reset`` gives (obs, image), ``step`` (obs, image,
    success); without a camera (a state-based policy) nothing is rendered and the image is None."""

    def __init__(self, task: str, benchmark_seed: int, variation: int, camera: Camera | None):
        name = f"{task}-v3"
        mt1 = benchmark(name, benchmark_seed)
        self.env = mt1.train_classes[name]()
        self.env.set_task(mt1.train_tasks[variation])
        self.camera = camera
        self.renderer, self.view = camera.renderer(self.env) if camera else (None, None)
        self.max_steps = self.env.max_path_length

    def image(self) -> np.ndarray | None:
        return self.camera.render(self.env, self.renderer, self.view) if self.camera else None

    def reset(self) -> tuple[np.ndarray, np.ndarray | None]:
        obs, _ = self.env.reset()
        return obs, self.image()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
        obs, _, _, _, info = self.env.step(np.clip(action, -1, 1).astype(np.float32))
        return obs, self.image(), bool(info["success"])

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
        self.env.close()


def expert(task: str):
    """MetaWorld's scripted policy of ``task`` (``get_action(obs) → 4-d action``)."""
    return metaworld().policies.ENV_POLICY_MAP[f"{task}-v3"]()


@dataclass
class Demo:
    images: np.ndarray  # T×H×W×3 uint8: the observation before each action
    proprio: np.ndarray  # T×4: hand xyz + gripper opening (obs[:4])
    states: np.ndarray  # T×39: MetaWorld's full observation (for the privileged-state check)
    actions: np.ndarray  # T×4
    success: bool  # at the last step


def record_demo(task: str, benchmark_seed: int, variation: int, camera: Camera, horizon: int) -> Demo:
    """The scripted expert on one variation for ``horizon`` steps, every observation rendered."""
    import warnings

    env, policy = Env(task, benchmark_seed, variation, camera), expert(task)
    images, states, actions, success = [], [], [], False
    try:
        obs, image = env.reset()
        for _ in range(horizon):
            with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips to [-1, 1]
                warnings.simplefilter("ignore")
                action = np.clip(policy.get_action(obs), -1, 1)
            images.append(image)
            states.append(obs)
            actions.append(action)
            obs, image, success = env.step(action)
    finally:
        env.close()
    states = np.asarray(states, dtype=np.float32)
    return Demo(np.stack(images), states[:, :4].copy(), states, np.asarray(actions, dtype=np.float32), success)
