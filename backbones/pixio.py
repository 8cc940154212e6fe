"""Pixio (arXiv 2512.15715): an enhanced MAE encoder with 8 CLS tokens.

Plain pre-norm ViT/16, LayerNorm eps 1e-6, no LayerScale; ``cls_token`` is (1, 8, D) and the
learned ``pos_embed`` has a row per CLS token plus the 16×16 patch grid. Official files
``pixio_vit{b,l,h,1b,5b}16.pth`` are plain state dicts in exactly our layout; Hugging Face
repos ``facebook/pixio-vit*16`` use the transformers layout and are converted here.
"""

from __future__ import annotations

import re

import torch

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import BackboneMeta, Preprocess

from .vit import ViT, resample_bicubic

NUM_CLS = 8
PREPROCESS = Preprocess(size=(256, 256), resize="squash", interpolation="bicubic")
# Keys a pretraining checkpoint (ours) carries beside the encoder; dropped on purpose.
PRETRAIN_ONLY = (r"decoder.*", r"mask_token")


def dense_layers(depth: int) -> tuple[int, ...]:
    """The 4 blocks Pixio's DPT head reads: ``depth//4·(s+1)−1`` for s = 0..3."""
    return tuple(depth // 4 * (s + 1) - 1 for s in range(4))


class Pixio(ViT):
    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Mean of the 8 final-normed CLS tokens (the HF ``pooler_output``)."""
        return self.forward_features(images, norm=True).cls[-1].mean(dim=1)

    def knn_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Pixio's k-NN reads the mean of the 8 *un-normed* last-block CLS tokens."""
        return self.forward_features(images, norm=False).cls[-1].mean(dim=1)


def convert(state: dict) -> dict:
    """Official, Hugging Face or our pretraining layout → our (= official) keys."""
    state = state.get("model", state)
    if any(k.startswith("encoder.") for k in state):  # our pretraining checkpoint
        return {k.removeprefix("encoder."): v for k, v in state.items()}
    if any(k.startswith(("embeddings.", "pixio.embeddings.")) for k in state):
        return _from_transformers({k.removeprefix("pixio."): v for k, v in state.items()})
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
    names = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.o_proj": "attn.proj",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    blocks = sorted({int(m.group(1)) for k in hf if (m := re.match(r"layers\.(\d+)\.", k))})
    for i in blocks:
        src, dst = f"layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.qkv.{kind}"] = torch.cat([hf.pop(f"{src}attention.{q}_proj.{kind}") for q in "qkv"])
            for a, b in names.items():
                out[f"{dst}{b}.{kind}"] = hf.pop(f"{src}{a}.{kind}")
    out.update(hf)  # anything left over is reported as unexpected by the strict load
    return out


def _spec(name: str, dim: int, depth: int, heads: int, file: str | None, hf: str | None,
          img_size: int = 256, patch: int = 16, preprocess: Preprocess = PREPROCESS) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="pixio", patch_size=patch, embed_dim=dim, depth=depth,
                        num_cls_tokens=NUM_CLS, preprocess=preprocess, default_layers=dense_layers(depth))
    return register_backbone(BackboneSpec(
        name=name, family="pixio",
        build=lambda: Pixio(meta, img_size=img_size, num_heads=heads, resample=resample_bicubic),
        convert=convert, ignore=PRETRAIN_ONLY, weights_file=file, hf_repo=hf,
        random_by_default=file is None,
    ))


for _size, (_dim, _depth, _heads) in {
    "b": (768, 12, 12), "l": (1024, 24, 16), "h": (1280, 32, 16), "1b": (1536, 48, 24), "5b": (3072, 48, 32),
}.items():
    _spec(f"pixio-{_size}16", _dim, _depth, _heads, f"pixio_vit{_size}16.pth", f"facebook/pixio-vit{_size}16")

# CPU-sized twin on the same code path: 16×16 grid at 128 px like the real 256 px / 16.
_spec("pixio-tiny", 192, 8, 3, None, None, img_size=128, patch=8,
      preprocess=Preprocess(size=(128, 128), resize="squash", interpolation="bicubic"))
