"""DINOv3 (Siméoni et al. 2025): ViT/16 with RoPE, 4 storage tokens and LayerScale, on timm's Eva.

We build timm's ``*_dinov3_qkvb`` variants: they keep q/v biases, so an official checkpoint whose
``qkv.bias`` is non-zero loads exactly (the bias-free variants would have to drop it). Official
files (``storage_tokens``, ``rope_embed.periods``…) are mapped with timm's own DINOv3 filter; the
RoPE periods are recomputed, ``bias_mask``/``mask_token`` are training-only.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import timm
import torch
from timm.models.eva import checkpoint_filter_fn

from evalsuite.checkpoints import BackboneSpec, CheckpointError, register_backbone
from evalsuite.contracts import Backbone, BackboneMeta, Features

from .vit import preprocess_imagenet


class DINOv3(Backbone):
    def __init__(self, meta: BackboneMeta, timm_name: str, img_size: int = 224):
        super().__init__()
        self.model = timm.create_model(timm_name, pretrained=False, num_classes=0, global_pool="token", img_size=img_size)
        self.timm_name = timm_name
        self.meta = dataclasses.replace(meta, num_params=sum(p.numel() for p in self.parameters()))

    def forward_features(self, images: torch.Tensor, layers: Sequence[int] | None = None, norm: bool = True) -> Features:
        take = self.resolve_layers(layers)
        p = self.meta.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"{self.meta.name}: image sides {tuple(images.shape[-2:])} must be multiples of {p}")
        out = self.model.forward_intermediates(images, indices=sorted(set(take)), return_prefix_tokens=True, norm=norm,
                                               output_fmt="NCHW", intermediates_only=True)
        by_index = dict(zip(sorted(set(take)), out))
        # prefix tokens are [CLS, storage × 4]: storage tokens never leave the backbone
        return Features(patch=[by_index[i][0] for i in take], cls=[by_index[i][1][:, :1] for i in take], layers=take)

    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images, norm=True).cls[-1][:, 0]


def make_convert(timm_name: str):
    def convert(state: dict) -> dict:
        state = state.get("model", state)
        if any(k.startswith("model.") for k in state):  # saved from this wrapper
            return dict(state)
        if "storage_tokens" not in state:
            raise CheckpointError("not an official DINOv3 checkpoint (no storage_tokens)")
        with torch.device("meta"):
            reference = timm.create_model(timm_name, pretrained=False, num_classes=0)
        return {f"model.{k}": v for k, v in checkpoint_filter_fn(state, reference).items()}

    return convert


def make_spec(name: str, timm_name: str, dim: int, depth: int, file: str | None, hf: str | None,
              img_size: int = 224) -> BackboneSpec:
    full = f"{timm_name}_qkvb"
    meta = BackboneMeta(name=name, family="dinov3", patch_size=16, embed_dim=dim, depth=depth, num_cls_tokens=1,
                        preprocess=preprocess_imagenet(img_size), default_layers=tuple(range(depth - 4, depth)))
    return BackboneSpec(name=name, family="dinov3", build=lambda: DINOv3(meta, full, img_size),
                        convert=make_convert(full), weights_file=file, hf_repo=hf, random_by_default=file is None)


for _name, _timm, _dim, _depth, _file in (
    ("dinov3-s16", "vit_small_patch16_dinov3", 384, 12, "dinov3_vits16_pretrain_lvd1689m.pth"),
    ("dinov3-b16", "vit_base_patch16_dinov3", 768, 12, "dinov3_vitb16_pretrain_lvd1689m.pth"),
    ("dinov3-l16", "vit_large_patch16_dinov3", 1024, 24, "dinov3_vitl16_pretrain_lvd1689m.pth"),
    ("dinov3-h16plus", "vit_huge_plus_patch16_dinov3", 1280, 32, "dinov3_vith16plus_pretrain_lvd1689m.pth"),
):
    register_backbone(make_spec(_name, _timm, _dim, _depth, _file, None))
