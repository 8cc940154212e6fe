"""What our feature path costs over a bare timm loop, and the forward throughput of the backbones
(goal: ours ÷ timm ≥ 0.95, same model, batch, threads and precision).

    python benchmarks/backbone_overhead.py [--backbones timm:vit_small_patch16_224,mae-b16] [--batch-size 32]

Prints one line per backbone: images/s through `forward_features` as the tasks call it, through a bare
timm `forward_features` loop on the same architecture, their ratio, and (on a GPU) MFU in bf16.
"""

from __future__ import annotations

import argparse

import torch

from evalsuite.bench import bench, ratio

DEFAULT = "timm:vit_tiny_patch16_224,timm:vit_small_patch16_224,mae-b16,dinov2-b14,pixio-tiny,pixio-b16"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=DEFAULT)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    args = parser.parse_args()
    print(f"{'backbone':<34} {'ours img/s':>10} {'timm img/s':>10} {'ours÷timm':>9} {'GFLOP/img':>9} {'MFU':>7}")
    for name in args.backbones.split(","):
        results, settings = bench(name, batch_size=args.batch_size, precision=args.precision, warmup=3, steps=args.steps)
        ours = results[0]
        bare = results[1] if len(results) > 1 else None
        value = ratio(results)
        mfu = "—" if ours.mfu is None else f"{100 * ours.mfu:.1f}%"
        print(f"{name:<34} {ours.images_per_s:>10.1f} {bare.images_per_s if bare else float('nan'):>10.1f} "
              f"{value if value is not None else float('nan'):>9.3f} {ours.gflops_per_image:>9.2f} {mfu:>7}"
              f"   ({settings['image_size']} px, {settings['device']}, {settings['threads']} threads)")


if __name__ == "__main__":
    main()
