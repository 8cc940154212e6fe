"""The plain ViT shared by Pixio, MAE and DINOv2, built from timm's `Block` and `PatchEmbed`.

Parameter names follow the official checkpoints of those three families (``cls_token``,
``register_tokens``, ``pos_embed``, ``blocks.{i}.attn.qkv``, ``ls1.gamma``, ``mlp.w12``…), so
their files load without renaming. Token layout: ``[CLS × n_cls][registers × n_reg][patches]``;
``pos_embed`` has one row per CLS token and per patch (registers carry no position), which is the
layout of Pixio (8 + 256 rows), MAE (1 + 196) and DINOv2 (1 + 1369).
"""

from __future__ import annotations

import dataclasses
import math
import re
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from evalsuite.contracts import Backbone, BackboneMeta, Features, Preprocess

# (pos_grid 1×D×h×w, new (H, W)) -> 1×D×H×W
GridResample = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def resample_bicubic(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixio/MAE rule: bicubic, align_corners=False, no antialias."""
    return F.interpolate(grid, size=size, mode="bicubic", align_corners=False)


def sincos_pos_embed_2d(dim: int, h: int, w: int, num_cls: int = 1) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table, (1, num_cls + h·w, dim), CLS rows zero.

    The first dim/2 channels encode the column (x) index and the second half the row, as in
    the official MAE code (its meshgrid puts the w coordinate first).
    """
    if dim % 4:
        raise ValueError("sin-cos position embedding needs dim divisible by 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    table = torch.cat([encode(cols), encode(rows)], dim=1).float()
    return torch.cat([torch.zeros(num_cls, dim), table])[None]


class SwiGLUFFN(nn.Module):
    """DINOv2's fused SwiGLU (ViT-g): ``w12`` packs gate and value, hidden rounded up to 8."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True, **_):
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class ViT(Backbone):
    def __init__(
        self,
        meta: BackboneMeta,
        *,
        img_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 0,
        pos_embed: str = "learned",  # or "sincos" (fixed, MAE)
        resample: GridResample = resample_bicubic,
        init_values: float | None = None,
        swiglu: bool = False,
        mask_token: bool = False,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        dim, depth, p, n_cls = meta.embed_dim, meta.depth, meta.patch_size, meta.num_cls_tokens
        self.num_cls_tokens, self.num_register_tokens = n_cls, num_register_tokens
        self.resample = resample
        self.patch_embed = PatchEmbed(img_size, p, 3, dim, strict_img_size=False)
        gh, gw = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, n_cls, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim)) if num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim)) if mask_token else None
        if pos_embed == "sincos":
            table = sincos_pos_embed_2d(dim, gh, gw, n_cls) if not _on_meta() else torch.zeros(1, n_cls + gh * gw, dim)
            self.pos_embed = nn.Parameter(table, requires_grad=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, n_cls + gh * gw, dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        rates = torch.linspace(0, drop_path_rate, depth).tolist() if not _on_meta() else [drop_path_rate] * depth
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, init_values=init_values, drop_path=rates[i],
                  norm_layer=norm, mlp_layer=SwiGLUFFN if swiglu else Mlp)
            for i in range(depth)
        )
        self.norm = norm(dim)
        self.meta = dataclasses.replace(meta, num_params=sum(p.numel() for p in self.parameters()))
        if not _on_meta():
            self._init_weights(pos_embed == "learned")

    def _init_weights(self, learned_pos: bool) -> None:
        if learned_pos:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)  # MAE/Pixio use normal(0.02); equivalent in practice
        for t in (self.register_tokens, self.mask_token):
            if t is not None:
                nn.init.trunc_normal_(t, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def num_prefix_tokens(self) -> int:
        return self.num_cls_tokens + self.num_register_tokens

    def pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        gh, gw = self.patch_embed.grid_size
        if (h, w) == (gh, gw):
            return self.pos_embed
        n = self.num_cls_tokens
        grid = self.pos_embed[:, n:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = self.resample(grid.float(), (h, w)).to(self.pos_embed.dtype)
        return torch.cat([self.pos_embed[:, :n], grid.flatten(2).transpose(1, 2)], dim=1)

    def prepare_tokens(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embedded tokens before the first block; ``patch_mask`` (B×N bool) swaps in ``mask_token`` (iBOT)."""
        B, _, H, W = images.shape
        p = self.meta.patch_size
        if H % p or W % p:
            raise ValueError(f"{self.meta.name}: image sides {H}×{W} must be multiples of the patch size {p}")
        h, w = H // p, W // p
        x = self.patch_embed(images)
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], self.mask_token.to(x.dtype)[None], x)
        pos = self.pos_embed_for(h, w)
        n = self.num_cls_tokens
        tokens = [self.cls_token.expand(B, -1, -1) + pos[:, :n]]
        if self.register_tokens is not None:
            tokens.append(self.register_tokens.expand(B, -1, -1))
        tokens.append(x + pos[:, n:])
        return torch.cat(tokens, dim=1), (h, w)

    def forward_tokens(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """All final-normed last-block tokens (prefix first); ``patch_mask`` swaps in ``mask_token`` (iBOT)."""
        x, _ = self.prepare_tokens(images, patch_mask)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_visible(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Masked-autoencoder encoder pass: prefix tokens plus the patches in ``ids_keep`` (B×n), final-normed."""
        x, _ = self.prepare_tokens(images)
        n = self.num_prefix_tokens
        visible = torch.gather(x[:, n:], 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :n], visible], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, images: torch.Tensor, layers: Sequence[int] | None = None, norm: bool = True) -> Features:
        take = self.resolve_layers(layers)
        x, (h, w) = self.prepare_tokens(images)
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(take) + 1]):
            x = block(x)
            if i in take:
                kept[i] = self.norm(x) if norm else x
        B, D, n = x.shape[0], x.shape[-1], self.num_prefix_tokens
        patch = [kept[i][:, n:].transpose(1, 2).reshape(B, D, h, w) for i in take]
        cls = [kept[i][:, : self.num_cls_tokens] for i in take]
        return Features(patch=patch, cls=cls, layers=take)


def _on_meta() -> bool:
    return torch.empty(0).device.type == "meta"


def preprocess_imagenet(size: int, resize: str = "resize-crop") -> Preprocess:
    return Preprocess(size=(size, size), resize=resize, resize_size=int(math.floor(size * 256 / 224)))


# ---------------------------------------------------------------------------------------
# transformers layout → ours (for ``hf-hub:`` weights and parity tests)
# ---------------------------------------------------------------------------------------
_HF_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.mask_token": "mask_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# Block parameters under transformers 5.x names and the 4.x names that hub files still carry.
_HF_BLOCK = {
    "layernorm_before": "norm1", "norm1": "norm1", "layernorm_after": "norm2", "norm2": "norm2",
    "attention.o_proj": "attn.proj", "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1", "intermediate.dense": "mlp.fc1", "mlp.fc2": "mlp.fc2", "output.dense": "mlp.fc2",
    "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
}
_HF_QKV = (("attention.q_proj", "attention.k_proj", "attention.v_proj"),
           ("attention.attention.query", "attention.attention.key", "attention.attention.value"))
_HF_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def is_transformers_layout(state: dict) -> bool:
    return any(k.split(".", 1)[-1].startswith("embeddings.") or k.startswith("embeddings.") for k in state)


def from_transformers(state: dict, prefixes: tuple[str, ...] = ()) -> dict:
    """Map a transformers ViT-family state dict (Pixio, ViTMAE, Dinov2[WithRegisters]) to our keys.

    Separate q/k/v projections are concatenated into ``attn.qkv``. Keys we do not know are kept
    under their own name so that the strict load reports them as unexpected.
    """
    hf = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        hf[key] = value
    out, qkv = {}, {}
    for key, value in hf.items():
        if key in _HF_EMBEDDINGS:
            if key == "embeddings.mask_token":
                value = value.reshape(1, -1)
            out[_HF_EMBEDDINGS[key]] = value
            continue
        match = _HF_LAYER.match(key)
        if match is None:
            out[key] = value
            continue
        i, name, kind = match.groups()
        full = f"{name}.{kind}" if kind == "lambda1" else name
        if full in _HF_BLOCK:
            out[f"blocks.{i}.{_HF_BLOCK[full]}" + ("" if kind == "lambda1" else f".{kind}")] = value
            continue
        for names in _HF_QKV:
            if name in names:
                qkv.setdefault((i, kind), [None] * 3)[names.index(name)] = value
                break
        else:
            out[key] = value
    for (i, kind), parts in qkv.items():
        if any(p is None for p in parts):
            raise KeyError(f"block {i}: incomplete q/k/v {kind} in the transformers checkpoint")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    return out
