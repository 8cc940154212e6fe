"""Speed of the cached-feature linear protocol (ratios; goals from the ImageNet adapters issue).

    python benchmarks/linear_sweep.py

1. 52-head sweep ÷ 1-head training on the same features (goal ≤ 2×);
2. sequential scikit-learn logistic-regression fits for the 52 configurations ÷ the sweep (goal ≥ 20×;
   a few fits are timed and scaled up);
3. warm feature-cache rerun ÷ cold run of `imagenet --protocol linear` on the mini world (goal ≤ 10 %).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch


def sweep_ratios(n: int = 8000, dim: int = 384, classes: int = 100, epochs: int = 3) -> None:
    from sklearn.linear_model import LogisticRegression

    from tasks.imagenet import HeadConfig, dinov2_grid, train_linear_heads

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=gen)
    feats = (torch.randn(classes, 5, dim, generator=gen)[labels] + torch.randn(n, 5, dim, generator=gen)).half()
    grid = dinov2_grid()
    timed = {}
    for name, configs in (("1 head", [HeadConfig(4, True, 1e-3)]), ("52 heads", grid)):
        start = time.perf_counter()
        train_linear_heads(feats, labels, classes, configs, epochs=epochs, batch_size=1024, seed=0)
        timed[name] = time.perf_counter() - start
    print(f"52-head sweep {timed['52 heads']:.2f}s vs 1 head {timed['1 head']:.2f}s: "
          f"{timed['52 heads'] / timed['1 head']:.2f}× (goal ≤ 2×)")
    per_group = []
    for n_blocks, pool in ((1, False), (4, True)):
        x = HeadConfig(n_blocks, pool, 0).inputs(feats.float()).numpy()
        start = time.perf_counter()
        LogisticRegression(max_iter=100).fit(x, labels.numpy())
        per_group.append(time.perf_counter() - start)
    sklearn_total = sum(per_group) / len(per_group) * len(grid)
    print(f"sequential scikit-learn, 52 fits ≈ {sklearn_total:.1f}s vs sweep {timed['52 heads']:.2f}s: "
          f"{sklearn_total / timed['52 heads']:.1f}× faster (goal ≥ 20×)")


def cache_ratio() -> None:
    from evalsuite.runner import run_cell

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EVALSUITE_FEATURE_CACHE"] = tmp
        times = []
        for _ in range(2):
            start = time.perf_counter()
            run_cell("mae-tiny", "imagenet", weights="random", data="mini", params={"protocol": "linear"},
                     out_dir=f"{tmp}/runs", force=True)
            times.append(time.perf_counter() - start)
    print(f"imagenet/linear on the mini world: cold {times[0]:.1f}s, warm {times[1]:.1f}s: "
          f"{100 * times[1] / times[0]:.0f} % (goal ≤ 10 %)")


if __name__ == "__main__":
    sweep_ratios()
    cache_ratio()
