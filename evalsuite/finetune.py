"""What end-to-end training of a backbone needs, whatever the task: which parameters train,
layer-wise learning-rate decay, stochastic depth, and randomness keyed by (seed, iteration).

Layer ids follow MAE/BEiT (``lrd.param_groups_lrd``): embeddings (patch embedding, CLS/register
tokens, position embedding) are layer 0, block k is layer k + 1, everything after the last block
(final norm, ``fc_norm``, head) is layer depth + 1, and a parameter's lr is scaled by
``decay ** (depth + 1 − layer_id)``. 1-D parameters, biases and tokens get no weight decay.
"""

from __future__ import annotations

import random
import re
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .environment import seed_everything
from .sampling import seeded

TRAINABLE = ("all", "last_blocks", "layernorm")
NO_DECAY_TOKENS = ("cls_token", "register_tokens", "reg_token", "pos_embed", "mask_token", "storage_tokens",
                   "decoder_pos_embed")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)(patch_embed|cls_token|register_tokens|reg_token|pos_embed|mask_token|storage_tokens)\b")


def transformer_blocks(backbone: nn.Module) -> nn.ModuleList:
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        name = getattr(getattr(backbone, "meta", None), "name", type(backbone).__name__)
        raise ValueError(f"{name} has no transformer blocks: partial/LayerNorm fine-tuning and layer-wise lr decay need a ViT")
    return blocks


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings, k + 1 for block k, depth + 1 for what follows the blocks."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if _EMBEDDING.search(name) else depth + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in NO_DECAY_TOKENS


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float = 1.0,
                 depth: int | None = None, backbone_prefix: str = "backbone.") -> list[dict]:
    """AdamW groups of the trainable parameters: one per (layer id, decay or not), ``lr`` already
    scaled (``lr_scale`` keeps the factor for schedules that set the lr themselves). Parameters
    outside ``backbone_prefix`` (a task's head) count as the last layer. Without layer decay there are
    two groups: with and without weight decay (the pretraining objectives' groups)."""
    if layer_decay != 1.0 and depth is None:
        raise ValueError("layer-wise lr decay needs the backbone depth")
    depth = depth or 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if layer_decay == 1.0:
            lid = 0
        else:
            lid = layer_id(name[len(backbone_prefix):], depth) if name.startswith(backbone_prefix) else depth + 1
        skip_decay = no_weight_decay(name, p)
        scale = layer_decay ** (depth + 1 - lid) if layer_decay != 1.0 else 1.0
        group = groups.setdefault((lid, skip_decay), {"params": [], "names": [], "lr": lr * scale, "lr_scale": scale,
                                                      "weight_decay": 0.0 if skip_decay else weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def final_norm(backbone: nn.Module) -> nn.Module | None:
    return getattr(backbone, "norm", None) or getattr(getattr(backbone, "model", None), "norm", None)


def select_trainable(backbone: nn.Module, trainable: str, blocks: int = 0) -> None:
    """``all``: everything; ``last_blocks``: the last ``blocks`` blocks (MAE §4.3); ``layernorm``: the
    LayerNorm affine parameters only. The readout (``fc_norm`` + head) always trains; it replaces the
    encoder's final norm, as in MAE's global-pool fine-tuning, so that norm is frozen (it gets no
    gradient, and DDP refuses trainable parameters without one)."""
    if trainable not in TRAINABLE:
        raise ValueError(f"unknown trainable set {trainable!r}; expected one of {TRAINABLE}")
    backbone.requires_grad_(trainable == "all")
    if trainable == "last_blocks":
        all_blocks = transformer_blocks(backbone)
        if not 0 <= blocks <= len(all_blocks):
            raise ValueError(f"--blocks must be in [0, {len(all_blocks)}], got {blocks}")
        for block in list(all_blocks)[len(all_blocks) - blocks:]:
            block.requires_grad_(True)
    elif trainable == "layernorm":
        transformer_blocks(backbone)
        norms = [m for m in backbone.modules() if isinstance(m, nn.LayerNorm) and m.elementwise_affine]
        if not norms:
            raise ValueError("ln-ft: the backbone has no LayerNorm with affine parameters")
        for module in norms:
            module.requires_grad_(True)
    norm = final_norm(backbone)
    if norm is not None:
        norm.requires_grad_(False)


def set_drop_path(backbone: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly from 0 (first block) to ``rate`` (last), as timm/MAE."""
    from timm.layers import DropPath

    blocks = transformer_blocks(backbone)
    for i, block in enumerate(blocks):
        r = rate * i / max(1, len(blocks) - 1)
        block.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
        block.drop_path2 = DropPath(r) if r > 0 else nn.Identity()


def seed_globals(*parts: int) -> None:
    """Seed torch, numpy and ``random`` from ``parts`` (for code that draws from global RNGs:
    timm's drop-path, Mixup and RandAugment)."""
    seed_everything(int(seeded(*parts).initial_seed()))


@contextmanager
def keyed_global_rng(*parts: int):
    """Run a block with the global RNGs seeded from ``parts``, then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_globals(*parts)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def iteration_seed_hook(seed: int, rank: int):
    """An mmengine hook that reseeds the global RNGs before every iteration from (seed, iteration,
    rank), so drop-path and mixup draws of a resumed run equal those of an uninterrupted one."""
    from mmengine.hooks import Hook

    class IterationSeedHook(Hook):
        priority = "VERY_HIGH"

        def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
            seed_globals(seed, runner.iter, rank, 11)

    return IterationSeedHook()
