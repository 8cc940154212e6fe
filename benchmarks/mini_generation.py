"""Mini-world generation rate: views/s at 128 px for RGB + depth + labels (goal ≥ 10 on 2 cores).

    python benchmarks/mini_generation.py [--views 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from evalsuite.mini.scenes import SceneRenderer, render_scene, sample_scene


def rate(n_views: int, views_per_scene: int, size: int, shadows: bool) -> float:
    rng = np.random.default_rng(0)
    render_scene(sample_scene(rng, n_views=1), size, size)  # GL context start-up is not generation
    start, done = time.perf_counter(), 0
    while done < n_views:
        scene = sample_scene(rng, n_views=views_per_scene)
        with SceneRenderer(scene, size, size, shadows=shadows) as renderer:
            for cam in range(views_per_scene):
                view = renderer.render(cam)
                assert view.depth is not None and view.semantic is not None
        done += views_per_scene
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--views", type=int, default=200)
    args = parser.parse_args()
    goal = 10.0
    for per_scene, shadows in ((1, False), (4, False), (4, True)):
        r = rate(args.views, per_scene, 128, shadows)
        print(f"128 px, {per_scene} view(s)/scene, shadows {'on ' if shadows else 'off'}: {r:7.1f} views/s  "
              f"({r / goal:.1f}× the {goal:g} views/s goal)")
    r = rate(max(8, args.views // 10), 2, 480, False)
    print(f"480×480 px, 2 views/scene: {r:7.1f} views/s")


if __name__ == "__main__":
    main()
