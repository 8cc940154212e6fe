"""Which blocks a dense head reads, and how (final norm, CLS), per reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from evalsuite.contracts import Backbone
from evalsuite.params import Params, param

IGNORE = 255


# ---------------------------------------------------------------------------------------
# Readout: which blocks a head reads, and how
# ---------------------------------------------------------------------------------------
# DINOv2's depther (`dinov2/hub/depthers.py`): lin.4 blocks per depth; L keeps [4, 11, 17, 23] on purpose
DINOV2_DEPTH_BLOCKS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}

LAYER_SETS: dict[str, Callable[[Backbone], tuple[int, ...]]] = {
    "last": lambda b: (b.meta.depth - 1,),
    "last4": lambda b: tuple(range(b.meta.depth - 4, b.meta.depth)),
    "dense": lambda b: tuple(b.meta.default_layers),  # the family's 4 dense blocks (Pixio: depth//4·(s+1)−1)
    "dinov2": lambda b: DINOV2_DEPTH_BLOCKS.get(b.meta.depth, tuple(b.meta.depth // 4 * (s + 1) - 1 for s in range(4))),
}


@dataclass(frozen=True)
class Readout(Params):
    """The part of every head's parameters that says what it reads from the frozen backbone."""

    layers: str = param("last", "blocks read: last | last4 | dense (the family's 4) | dinov2 (DINOv2's depther lin.4)",
                        choices=tuple(LAYER_SETS))
    norm: bool = param(True, "apply the backbone's final norm to every block read")
    cls: str = param("mean", "mean: concatenate the mean CLS token to every patch token; none: patch tokens only",
                     choices=("mean", "none"))

    def layer_indices(self, backbone: Backbone) -> tuple[int, ...]:
        return LAYER_SETS[self.layers](backbone)


def read_maps(backbone: Backbone, images: torch.Tensor, layers: Sequence[int], readout: Readout) -> list[torch.Tensor]:
    """One B×C×h×w map per block: patch tokens, with the mean of the block's CLS tokens concatenated
    (``cls="mean"``: Pixio's readout with its 8 CLS tokens, DINOv2's with its one; CNNs have none)."""
    feats = backbone.forward_features(images, layers=layers, norm=readout.norm)
    maps = []
    for patch, cls in zip(feats.patch, feats.cls):
        if readout.cls == "mean" and cls.shape[1] > 0:
            patch = torch.cat([patch, cls.mean(dim=1)[..., None, None].expand(-1, -1, *patch.shape[-2:])], dim=1)
        maps.append(patch)
    return maps


def readout_dims(backbone: Backbone, layers: Sequence[int], readout: Readout) -> list[int]:
    """Channels of each map `read_maps` gives, probed with a small zero image."""
    p = backbone.meta.patch_size
    device = next(backbone.parameters()).device
    with torch.no_grad():
        maps = read_maps(backbone, torch.zeros(1, 3, 8 * p, 8 * p, device=device), layers, readout)
    return [m.shape[1] for m in maps]
