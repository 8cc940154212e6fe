"""Seeded MuJoCo scenes for the mini world: a textured room, 3–8 objects, lights and cameras.

Every view comes with exact ground truth: RGB (rasterised), metric z-depth and per-pixel semantic
class and instance id (ray cast against the analytic geoms, geom → class), intrinsics and
cam2world, both in the OpenCV convention (x right, y down, z forward; pixel centres at integer
coordinates).
Rendering is headless through EGL (``MUJOCO_GL=egl`` is set when unset). Shadows and
reflections are off by default: 4–6× faster and irrelevant for the labels.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field

import numpy as np

from ..environment import prepare_headless_gl

os.environ.setdefault("MUJOCO_GL", "egl")

SHAPES = ("box", "sphere", "cylinder", "capsule", "ellipsoid")
SHAPE_WORDS = {"box": "cube", "sphere": "sphere", "cylinder": "cylinder", "capsule": "capsule", "ellipsoid": "ellipsoid"}
COLOURS = {  # CLEVR's palette
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
MATERIALS = ("rubber", "metal")
SIZES = {"small": 0.11, "large": 0.2}
# Semantic classes (0 = other: nothing rendered there).
CLASSES = ("other", "floor", "wall", *SHAPES)
FLOOR, WALL = 1, 2
ROOM_HALF = 2.0
WALL_HEIGHT = 3.0


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    material: str
    size: str
    x: float
    y: float
    yaw: float
    stretch: float = 1.0  # per-object aspect variation (boxes, ellipsoids, cylinders, capsules)

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def semantic(self) -> int:
        return CLASSES.index(self.shape)


@dataclass(frozen=True)
class Camera:
    position: tuple[float, float, float]
    target: tuple[float, float, float]
    fovy: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    cameras: tuple[Camera, ...]
    floor: dict = field(default_factory=dict)
    wall: dict = field(default_factory=dict)
    lights: tuple[tuple[float, ...], ...] = ()


@dataclass
class View:
    rgb: np.ndarray  # H×W×3 uint8
    depth: np.ndarray  # H×W float32 metres (z-depth), 0 where no surface was hit
    semantic: np.ndarray  # H×W uint8, index into CLASSES
    instance: np.ndarray  # H×W int16: object index + 1, 0 for floor/walls/other
    intrinsics: np.ndarray  # 3×3 OpenCV
    cam2world: np.ndarray  # 4×4 OpenCV


def _texture(rng: np.random.Generator) -> dict:
    """Muted room textures (grey levels with a light tint), so that objects carry the colour."""
    kind = ("checker", "gradient", "flat")[rng.integers(3)]
    grey = rng.uniform(0.25, 0.85, 2)
    tint = rng.uniform(-0.1, 0.1, (2, 3))
    rgb1, rgb2 = np.clip(grey[:, None] + tint, 0, 1)
    return {"builtin": kind, "rgb1": rgb1, "rgb2": rgb2, "repeat": int(rng.integers(2, 9)), "mark": float(rng.uniform(0, 0.2))}


def sample_objects(rng: np.random.Generator, count: int, fixed: tuple[SceneObject, ...] = (),
                   shapes=SHAPES, colours=tuple(COLOURS)) -> tuple[SceneObject, ...]:
    """Objects on the floor, not overlapping one another or the ``fixed`` ones."""
    placed = list(fixed)
    for _ in range(200 * count):
        if len(placed) >= count + len(fixed):
            break
        size = ("small", "large")[rng.integers(2)]
        x, y = rng.uniform(-1.2, 1.2, 2)
        if any(np.hypot(x - o.x, y - o.y) < SIZES[size] + o.radius + 0.08 for o in placed):
            continue
        placed.append(SceneObject(shapes[rng.integers(len(shapes))], colours[rng.integers(len(colours))],
                                  MATERIALS[rng.integers(2)], size, float(x), float(y), float(rng.uniform(0, np.pi)),
                                  float(rng.uniform(0.7, 1.3))))
    return tuple(placed)


def sample_camera(rng: np.random.Generator, target=(0.0, 0.0, 0.15), distance=(1.4, 1.9), height=(0.7, 1.6)) -> Camera:
    azimuth = rng.uniform(0, 2 * np.pi)
    r = rng.uniform(*distance)
    pos = (target[0] + r * np.cos(azimuth), target[1] + r * np.sin(azimuth), rng.uniform(*height))
    jitter = rng.uniform(-0.15, 0.15, 2)
    return Camera(tuple(float(v) for v in pos), (float(target[0] + jitter[0]), float(target[1] + jitter[1]), float(target[2])),
                  float(rng.uniform(50, 65)))


def sample_scene(rng: np.random.Generator, n_views: int = 1, n_objects: int | None = None,
                 fixed: tuple[SceneObject, ...] = ()) -> Scene:
    count = int(rng.integers(3, 9)) if n_objects is None else n_objects
    objects = sample_objects(rng, max(0, count - len(fixed)), fixed)
    lights = tuple((*rng.uniform(-1.5, 1.5, 2), rng.uniform(2.0, 2.8), rng.uniform(0.4, 0.8)) for _ in range(rng.integers(1, 3)))
    return Scene(objects, tuple(sample_camera(rng) for _ in range(n_views)), _texture(rng), _texture(rng), lights)


def _geom(o: SceneObject, i: int) -> str:
    r, s = o.radius, o.stretch
    size = {"box": f"{r * s:.4f} {r / s:.4f} {r:.4f}", "sphere": f"{r:.4f}", "cylinder": f"{r:.4f} {r * s:.4f}",
            "capsule": f"{r * 0.7:.4f} {r * 0.6 * s:.4f}", "ellipsoid": f"{r * s:.4f} {r / s:.4f} {r * 0.8:.4f}"}[o.shape]
    z = {"box": r, "sphere": r, "cylinder": r * s, "capsule": r * 0.7 + r * 0.6 * s, "ellipsoid": r * 0.8}[o.shape]
    rgba = " ".join(f"{c / 255:.3f}" for c in COLOURS[o.colour]) + " 1"
    return (f'<geom name="obj{i}" type="{o.shape}" size="{size}" pos="{o.x:.4f} {o.y:.4f} {z:.4f}" '
            f'euler="0 0 {o.yaw:.4f}" rgba="{rgba}" material="{o.material}"/>')


def scene_xml(scene: Scene, width: int, height: int, shadows: bool = False, reflections: bool = False) -> str:
    def tex(name, t):
        c1, c2 = (" ".join(f"{v:.3f}" for v in t[k]) for k in ("rgb1", "rgb2"))
        return (f'<texture name="{name}" type="2d" builtin="{t["builtin"]}" rgb1="{c1}" rgb2="{c2}" width="64" height="64" '
                f'mark="random" random="{t["mark"]:.3f}" markrgb="{c2}"/>'
                f'<material name="{name}" texture="{name}" texrepeat="{t["repeat"]} {t["repeat"]}"/>')

    lights = "".join(f'<light pos="{x:.3f} {y:.3f} {z:.3f}" dir="{-x / 3:.3f} {-y / 3:.3f} -1" diffuse="{d:.3f} {d:.3f} {d:.3f}" '
                     f'castshadow="{str(shadows).lower()}"/>' for x, y, z, d in scene.lights)
    h, wh = ROOM_HALF, WALL_HEIGHT / 2
    walls = "".join(f'<geom name="wall{i}" type="box" size="{sx} {sy} {wh}" pos="{px} {py} {wh}" material="wall"/>'
                    for i, (sx, sy, px, py) in enumerate([(h, 0.05, 0, h), (h, 0.05, 0, -h), (0.05, h, h, 0), (0.05, h, -h, 0)]))
    cams = "".join(_camera_xml(c, i) for i, c in enumerate(scene.cameras))
    objects = "".join(_geom(o, i) for i, o in enumerate(scene.objects))
    refl = 0.25 if reflections else 0
    return f"""<mujoco>
<statistic extent="1" center="0 0 0.5"/>
<visual><global offwidth="{width}" offheight="{height}"/><quality shadowsize="{2048 if shadows else 0}"/>
<map znear="0.02" zfar="30"/><headlight ambient="0.35 0.35 0.35" diffuse="0.25 0.25 0.25"/></visual>
<asset>{tex("floor", scene.floor)}{tex("wall", scene.wall)}
<material name="rubber" specular="0.05" shininess="0.05"/>
<material name="metal" specular="0.9" shininess="0.9" reflectance="{refl}"/></asset>
<worldbody>{lights}<geom name="floor" type="plane" size="{h} {h} 0.1" material="floor"/>{walls}{objects}{cams}</worldbody>
</mujoco>"""


def _look_at(c: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera axes in world: right, down, forward (OpenCV)."""
    forward = np.subtract(c.target, c.position).astype(np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return right, down, forward


def _camera_xml(c: Camera, i: int) -> str:
    right, down, _ = _look_at(c)
    up = -down  # MuJoCo cameras: x right, y up, looking along −z
    axes = " ".join(f"{v:.6f}" for v in (*right, *up))
    return f'<camera name="cam{i}" pos="{c.position[0]:.6f} {c.position[1]:.6f} {c.position[2]:.6f}" xyaxes="{axes}" fovy="{c.fovy:.4f}"/>'


def intrinsics(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """OpenCV K of a MuJoCo camera: square pixels, principal point at the image centre."""
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])


_GL_CONTEXTS: dict[tuple[int, int], object] = {}


def _free_gl_contexts() -> None:
    """Freed at exit, before interpreter teardown: MuJoCo's own finaliser would run after its EGL
    bindings are gone and print an AttributeError."""
    while _GL_CONTEXTS:
        _GL_CONTEXTS.popitem()[1].free()


def _gl_context(width: int, height: int):
    """One EGL context per size and process: creating one per scene would cost 0.15 s each."""
    import mujoco

    key = (width, height)
    if key not in _GL_CONTEXTS:
        prepare_headless_gl()
        _GL_CONTEXTS[key] = mujoco.GLContext(width, height)
        if len(_GL_CONTEXTS) == 1:  # after the context: at exit ours runs before EGL's own eglTerminate
            atexit.register(_free_gl_contexts)
    _GL_CONTEXTS[key].make_current()
    return _GL_CONTEXTS[key]


class SceneRenderer:
    """Compiles one scene and renders its views with MuJoCo's low-level renderer."""

    def __init__(self, scene: Scene, width: int, height: int, shadows: bool = False, reflections: bool = False):
        import mujoco

        self._mj = mujoco
        self.scene, self.width, self.height = scene, width, height
        self.model = mujoco.MjModel.from_xml_string(scene_xml(scene, width, height, shadows, reflections))
        self.data = mujoco.MjData(self.model)
        mujoco.mj_forward(self.model, self.data)
        _gl_context(width, height)
        self._context = mujoco.MjrContext(self.model, mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._scene = mujoco.MjvScene(self.model, maxgeom=64 + self.model.ngeom)
        self._option, self._perturb, self._camera = mujoco.MjvOption(), mujoco.MjvPerturb(), mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._viewport = mujoco.MjrRect(0, 0, width, height)
        n_geoms = self.model.ngeom
        self._semantic = np.zeros(n_geoms + 1, np.uint8)  # index 0: nothing rendered
        self._instance = np.zeros(n_geoms + 1, np.int16)
        for g in range(n_geoms):
            name = mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_GEOM, g)
            if name == "floor":
                self._semantic[g + 1] = FLOOR
            elif name.startswith("wall"):
                self._semantic[g + 1] = WALL
            else:
                i = int(name.removeprefix("obj"))
                self._semantic[g + 1] = scene.objects[i].semantic
                self._instance[g + 1] = i + 1

    def __enter__(self) -> "SceneRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self._context.free()

    def _draw_rgb(self, cam: int) -> np.ndarray:
        mj = self._mj
        self._camera.fixedcamid = cam
        mj.mjv_updateScene(self.model, self.data, self._option, self._perturb, self._camera, mj.mjtCatBit.mjCAT_ALL, self._scene)
        mj.mjr_render(self._viewport, self._scene, self._context)
        rgb = np.empty((self.height, self.width, 3), np.uint8)
        mj.mjr_readPixels(rgb, None, self._viewport, self._context)
        return rgb[::-1].copy()

    def _raycast(self, cam: int, K: np.ndarray, cam2world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact per-pixel geometry: (geom id + 1, 0 where no hit) and metric z-depth.

        One ray per pixel centre against the analytic geoms (``mj_multiRay``), so depth and labels
        are exact: a 24-bit depth buffer would be off by ~1e-4 relative, and rasterised spheres are
        tessellated. RGB comes from the rasteriser and may differ at silhouettes by a sub-pixel.
        """
        u, v = np.meshgrid(np.arange(self.width), np.arange(self.height))
        rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1).reshape(-1, 3)
        rays = rays_cam @ cam2world[:3, :3].T
        norms = np.linalg.norm(rays, axis=1)
        unit = np.ascontiguousarray((rays / norms[:, None]).reshape(-1))
        geom = np.empty(len(norms), np.int32)
        dist = np.empty(len(norms))
        self._mj.mj_multiRay(self.model, self.data, cam2world[:3, 3].astype(np.float64), unit, None, True, -1,
                             geom, dist, len(norms), 100.0)  # MuJoCo 3.3's signature (no normals output)
        hit = geom >= 0
        depth = np.where(hit, dist / norms, 0.0)  # a ray with z = 1 in the camera: z-depth = range / |ray|
        return (geom + 1).reshape(self.height, self.width), depth.reshape(self.height, self.width).astype(np.float32)

    def render(self, cam: int = 0) -> View:
        c = self.scene.cameras[cam]
        right, down, forward = _look_at(c)
        cam2world = np.eye(4)
        cam2world[:3, :3] = np.stack([right, down, forward], axis=1)
        cam2world[:3, 3] = c.position
        K = intrinsics(c.fovy, self.width, self.height)
        geom, depth = self._raycast(cam, K, cam2world)
        return View(rgb=self._draw_rgb(cam), depth=depth, semantic=self._semantic[geom], instance=self._instance[geom],
                    intrinsics=K, cam2world=cam2world)


def render_scene(scene: Scene, width: int, height: int, **kwargs) -> list[View]:
    with SceneRenderer(scene, width, height, **kwargs) as renderer:
        return [renderer.render(i) for i in range(len(scene.cameras))]
