"""DINOv2 (Oquab et al. 2023): ViT/14 with LayerScale, optional 4 registers, SwiGLU for ViT-g.

Official hub files (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``) are plain state dicts in our
layout, ``mask_token`` included (iBOT). Position-embedding interpolation follows the official
rule: bicubic with a 0.1 offset on the scale factor for the original models, plain size with
antialiasing for the register models.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import BackboneMeta

from .vit import from_transformers, is_transformers_layout, ViT, preprocess_imagenet


def resample_offset(grid: torch.Tensor, size: tuple[int, int], offset: float = 0.1) -> torch.Tensor:
    """DINOv2 without registers: scale factor (new + 0.1)/old, which is not the same as size=new."""
    h, w = grid.shape[-2:]
    scale = ((size[0] + offset) / h, (size[1] + offset) / w)
    return F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)


def resample_antialias(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(grid, size=size, mode="bicubic", align_corners=False, antialias=True)


class DINOv2(ViT):
    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images, norm=True).cls[-1][:, 0]


def convert(state: dict) -> dict:
    state = state.get("model", state)
    if is_transformers_layout(state):
        return from_transformers(state, ("dinov2.",))
    if any(k.startswith("encoder.") for k in state):
        return {k.removeprefix("encoder."): v for k, v in state.items()}
    return dict(state)


def make_spec(name: str, dim: int, depth: int, heads: int, registers: int, swiglu: bool, file: str | None,
          hf: str | None, patch: int = 14, img_size: int = 518, eval_size: int = 224) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="dinov2", patch_size=patch, embed_dim=dim, depth=depth, num_cls_tokens=1,
                        preprocess=preprocess_imagenet(eval_size), default_layers=tuple(range(depth - 4, depth)))
    resample = resample_antialias if registers else partial(resample_offset, offset=0.1)
    return BackboneSpec(
        name=name, family="dinov2",
        build=lambda: DINOv2(meta, img_size=img_size, num_heads=heads, num_register_tokens=registers,
                             resample=resample, init_values=1e-5, swiglu=swiglu, mask_token=True),
        convert=convert, weights_file=file, hf_repo=hf, random_by_default=file is None,
    )


_HF_NAMES = {"s": "small", "b": "base", "l": "large", "g": "giant"}
for _size, (_dim, _depth, _heads, _swiglu) in {
    "s": (384, 12, 6, False), "b": (768, 12, 12, False), "l": (1024, 24, 16, False), "g": (1536, 40, 24, True),
}.items():
    register_backbone(make_spec(f"dinov2-{_size}14", _dim, _depth, _heads, 0, _swiglu, f"dinov2_vit{_size}14_pretrain.pth",
          f"facebook/dinov2-{_HF_NAMES[_size]}"))
    register_backbone(make_spec(f"dinov2-{_size}14-reg", _dim, _depth, _heads, 4, _swiglu, f"dinov2_vit{_size}14_reg4_pretrain.pth",
          f"facebook/dinov2-with-registers-{_HF_NAMES[_size]}"))

register_backbone(make_spec("dino-tiny", 192, 8, 3, 0, False, None, None, patch=8, img_size=128, eval_size=128))
