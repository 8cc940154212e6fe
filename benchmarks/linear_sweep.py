"""Speed of the cached-feature ImageNet protocols (ratios; goals from the ImageNet adapters issue).

    python benchmarks/linear_sweep.py [--backbones mae-b16,mae-l16,mae-h14] [--quick]

Measured on this machine, then combined for the ImageNet-1k protocol (1,281,167 train images,
1000 classes, 10 epochs at batch 1024 = DINOv2's 12.5k iterations):

1. head training alone: 52-head sweep ÷ 1 head on the same cached features. The heads share one
   pass over the data but not their FLOPs (52 heads are 52× the multiply-adds), so on a CPU, where
   the GEMMs are compute-bound, this ratio is far above 2×;
2. the whole cell: (extraction + sweep) ÷ (extraction + 1 head) (goal ≤ 2×), extraction measured
   per image for each backbone at 224 px (random weights: speed does not depend on them);
3. sequential scikit-learn fits (the ``logreg`` protocol's settings: standardised, lbfgs, max_iter
   1000) for the 52 configurations ÷ the sweep, on the same features (goal ≥ 20×);
4. warm feature-cache rerun ÷ cold run (goal ≤ 10 %): measured directly on the mini world, and
   combined for ImageNet-1k from (1) and (2).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

IMAGENET_TRAIN, IMAGENET_CLASSES, EPOCHS = 1_281_167, 1000, 10


def _features(n: int, dim: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=gen)
    feats = torch.randn(classes, 5, dim, generator=gen)[labels] + 2 * torch.randn(n, 5, dim, generator=gen)
    return feats.half(), labels


def head_seconds_per_sample_epoch(dim: int, n: int = 4096, classes: int = IMAGENET_CLASSES) -> dict[str, float]:
    """Seconds per (training sample × epoch) of the 52-head sweep and of one head, at batch 1024."""
    from tasks.imagenet import HeadConfig, dinov2_grid, train_linear_heads

    feats, labels = _features(n, dim, classes)
    out = {}
    for name, configs in (("one", [HeadConfig(4, True, 1e-3)]), ("sweep", dinov2_grid())):
        train_linear_heads(feats[:1024], labels[:1024], classes, configs, epochs=1, batch_size=1024, seed=0)  # warm-up
        start = time.perf_counter()
        train_linear_heads(feats, labels, classes, configs, epochs=1, batch_size=1024, seed=0)
        out[name] = (time.perf_counter() - start) / n
    return out


@torch.inference_mode()
def extraction_seconds_per_image(name: str, images: int = 16) -> tuple[float, int]:
    """(seconds per 224-px image of the linear protocol's extraction, the backbone's width)."""
    from evalsuite.checkpoints import create_backbone
    from tasks.imagenet import linear_features

    backbone = create_backbone(name, "random").eval()
    batch = torch.randn(8, 3, 224, 224)
    linear_features(backbone, batch[:2])  # warm-up
    start = time.perf_counter()
    for _ in range(images // len(batch)):
        linear_features(backbone, batch)
    return (time.perf_counter() - start) / images, backbone.meta.embed_dim


def sklearn_ratio(n: int = 20000, dim: int = 192, classes: int = 100) -> None:
    """n ≫ d like ImageNet (1.28M images, ≤ 5·1280 dims). scikit-learn's cost is lbfgs iterations ×
    full passes, so the ratio scales with the iterations a problem needs; they are printed."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tasks.imagenet import HeadConfig, dinov2_grid, train_linear_heads

    feats, labels = _features(n, dim, classes)
    start = time.perf_counter()
    train_linear_heads(feats, labels, classes, dinov2_grid(), epochs=EPOCHS, batch_size=1024, seed=0)
    sweep = time.perf_counter() - start
    fits, iterations = [], []
    for n_blocks, pool in ((1, False), (4, True)):  # the smallest and the largest input of the grid
        x = HeadConfig(n_blocks, pool, 0).inputs(feats.float()).numpy()
        start = time.perf_counter()
        model = LogisticRegression(C=1.0, max_iter=1000).fit(StandardScaler().fit_transform(x), labels.numpy())
        fits.append(time.perf_counter() - start)
        iterations.append(int(model.n_iter_[0]))
    sequential = sum(fits) / len(fits) * len(dinov2_grid())
    print(f"3. scikit-learn, 52 sequential fits ≈ {sequential:.0f}s vs the sweep {sweep:.1f}s ({n} × {dim}·(1…5)-d "
          f"synthetic features, {classes} classes, {EPOCHS} epochs): {sequential / sweep:.1f}× (goal ≥ 20×); lbfgs "
          f"converged in {iterations} iterations ({sequential / sweep / (sum(iterations) / 2):.2f}× the sweep per iteration)")


def mini_cache_ratio() -> float:
    from evalsuite.runner import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EVALSUITE_FEATURE_CACHE"] = tmp
        times = []
        for _ in range(2):
            start = time.perf_counter()
            evaluate("mae-tiny", "imagenet", weights="random", data="mini", params={"protocol": "linear"},
                     out=f"{tmp}/runs", force=True)
            times.append(time.perf_counter() - start)
    print(f"4. mini world, mae-tiny imagenet/linear: cold {times[0]:.1f}s, warm {times[1]:.1f}s: "
          f"{100 * times[1] / times[0]:.0f} % (goal ≤ 10 %; a 128-px tiny ViT makes extraction cheap here)")
    return times[1] / times[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="mae-b16,mae-l16,mae-h14")
    parser.add_argument("--quick", action="store_true", help="fewer samples (noisier)")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ImageNet-1k: {IMAGENET_TRAIN} images, "
          f"{IMAGENET_CLASSES} classes, {EPOCHS} epochs at batch 1024\n")
    for name in args.backbones.split(","):
        extract, dim = extraction_seconds_per_image(name, 8 if args.quick else 16)
        heads = head_seconds_per_sample_epoch(dim, n=2048 if args.quick else 4096)
        sweep, one = heads["sweep"] * EPOCHS * IMAGENET_TRAIN, heads["one"] * EPOCHS * IMAGENET_TRAIN
        cold = extract * IMAGENET_TRAIN + sweep
        print(f"{name}: extraction {1e3 * extract:.0f} ms/image; 10 epochs of heads: 52 = {sweep / 3600:.1f} h, "
              f"1 = {one / 3600:.2f} h")
        print(f"  1. head training alone: 52 heads ÷ 1 head = {sweep / one:.1f}× (52× the FLOPs)")
        print(f"  2. whole cell (extraction + heads): 52 ÷ 1 = {cold / (extract * IMAGENET_TRAIN + one):.2f}× (goal ≤ 2×)")
        print(f"  4. warm cache (heads only) ÷ cold = {100 * sweep / cold:.0f} % (goal ≤ 10 %)")
    sklearn_ratio(n=5000 if args.quick else 20000)
    mini_cache_ratio()


if __name__ == "__main__":
    main()
