"""MAE (He et al. 2022) encoders: ViT with one CLS token and a fixed 2-D sin-cos position table.

Official ``mae_pretrain_vit_{base,large,huge}.pth`` files are ``{'model': encoder state dict}``
in timm-style keys, which is our layout; the sin-cos table is stored in the file and loaded as
a frozen parameter. Other resolutions interpolate the table bicubically, as MAE fine-tuning does.
"""

from __future__ import annotations

import torch

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import BackboneMeta, Preprocess

from .vit import from_transformers, is_transformers_layout, ViT, preprocess_imagenet, resample_bicubic

# Pretraining checkpoints (official "visualize" files and ours) carry the decoder; dropped on purpose.
PRETRAIN_ONLY = (r"decoder.*", r"mask_token")


class MAE(ViT):
    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The final-normed CLS token (MAE linear probing)."""
        return self.forward_features(images, norm=True).cls[-1][:, 0]


def convert(state: dict) -> dict:
    state = state.get("model", state)
    if is_transformers_layout(state):
        return from_transformers(state, ("vit.",))
    if any(k.startswith("encoder.") for k in state):
        return {k.removeprefix("encoder."): v for k, v in state.items()}
    return dict(state)


def make_spec(name: str, dim: int, depth: int, heads: int, patch: int, file: str | None,
          hf: str | None, img_size: int = 224, preprocess: Preprocess | None = None) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="mae", patch_size=patch, embed_dim=dim, depth=depth, num_cls_tokens=1,
                        preprocess=preprocess or preprocess_imagenet(img_size),
                        default_layers=tuple(depth // 4 * (s + 1) - 1 for s in range(4)))
    return BackboneSpec(
        name=name, family="mae",
        build=lambda: MAE(meta, img_size=img_size, num_heads=heads, pos_embed="sincos", resample=resample_bicubic),
        convert=convert, ignore=PRETRAIN_ONLY, weights_file=file, hf_repo=hf, random_by_default=file is None,
    )


register_backbone(make_spec("mae-b16", 768, 12, 12, 16, "mae_pretrain_vit_base.pth", "facebook/vit-mae-base"))
register_backbone(make_spec("mae-l16", 1024, 24, 16, 16, "mae_pretrain_vit_large.pth", "facebook/vit-mae-large"))
register_backbone(make_spec("mae-h14", 1280, 32, 16, 14, "mae_pretrain_vit_huge.pth", "facebook/vit-mae-huge"))
register_backbone(make_spec("mae-tiny", 192, 8, 3, 8, None, None, img_size=128,
      preprocess=Preprocess(size=(128, 128), resize="squash", interpolation="bicubic")))
