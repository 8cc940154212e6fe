"""MAE (He et al. 2022) encoders: ViT with one CLS token and a fixed 2-D sin-cos position table.

Official ``mae_pretrain_vit_{base,large,huge}.pth`` files are ``{'model': encoder state dict}``
in timm-style keys, which is our layout; the sin-cos table is stored in the file and loaded as
a frozen parameter. Other resolutions interpolate the table bicubically, as MAE fine-tuning does.
"""

from __future__ import annotations

import re

import torch

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import BackboneMeta, Preprocess

from .vit import ViT, preprocess_imagenet, resample_bicubic

# Pretraining checkpoints (official "visualize" files and ours) carry the decoder; dropped on purpose.
PRETRAIN_ONLY = (r"decoder.*", r"mask_token")


class MAE(ViT):
    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The final-normed CLS token (MAE linear probing)."""
        return self.forward_features(images, norm=True).cls[-1][:, 0]


def convert(state: dict) -> dict:
    state = state.get("model", state)
    if any(k.startswith("encoder.") for k in state):
        return {k.removeprefix("encoder."): v for k, v in state.items()}
    if any(k.startswith(("embeddings.", "vit.embeddings.")) for k in state):
        return _from_transformers({k.removeprefix("vit."): v for k, v in state.items()})
    return dict(state)


def _from_transformers(hf: dict) -> dict:
    out = {
        "cls_token": hf.pop("embeddings.cls_token"),
        "pos_embed": hf.pop("embeddings.position_embeddings"),
        "patch_embed.proj.weight": hf.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": hf.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": hf.pop("layernorm.weight"),
        "norm.bias": hf.pop("layernorm.bias"),
    }
    names = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
    blocks = sorted({int(m.group(1)) for k in hf if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in blocks:
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [hf.pop(f"{src}attention.attention.{q}.{kind}") for q in ("query", "key", "value")]
            out[f"{dst}attn.qkv.{kind}"] = torch.cat(qkv)
            for a, b in names.items():
                out[f"{dst}{b}.{kind}"] = hf.pop(f"{src}{a}.{kind}")
    out.update(hf)
    return out


def _spec(name: str, dim: int, depth: int, heads: int, patch: int, file: str | None,
          hf: str | None, img_size: int = 224, preprocess: Preprocess | None = None) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="mae", patch_size=patch, embed_dim=dim, depth=depth, num_cls_tokens=1,
                        preprocess=preprocess or preprocess_imagenet(img_size),
                        default_layers=tuple(depth // 4 * (s + 1) - 1 for s in range(4)))
    return register_backbone(BackboneSpec(
        name=name, family="mae",
        build=lambda: MAE(meta, img_size=img_size, num_heads=heads, pos_embed="sincos", resample=resample_bicubic),
        convert=convert, ignore=PRETRAIN_ONLY, weights_file=file, hf_repo=hf, random_by_default=file is None,
    ))


_spec("mae-b16", 768, 12, 12, 16, "mae_pretrain_vit_base.pth", "facebook/vit-mae-base")
_spec("mae-l16", 1024, 24, 16, 16, "mae_pretrain_vit_large.pth", "facebook/vit-mae-large")
_spec("mae-h14", 1280, 32, 16, 14, "mae_pretrain_vit_huge.pth", "facebook/vit-mae-huge")
_spec("mae-tiny", 192, 8, 3, 8, None, None, img_size=128,
      preprocess=Preprocess(size=(128, 128), resize="squash", interpolation="bicubic"))
