"""Any timm model as a backbone: ``--backbone timm:<model_name>`` (e.g. ``timm:vit_small_patch16_224``,
``timm:convnext_tiny``).

The model is built by ``timm.create_model(name, num_classes=0)``; features come from timm's own
``forward_intermediates`` (ViTs: spatial tokens and prefix tokens of any block, the final norm on
request; CNNs: stage maps), preprocessing from the model's ``pretrained_cfg`` (input size, mean/std,
interpolation, ``crop_pct``), and the global embedding is timm's own pooled pre-logits feature.

Weights: ``--weights PATH`` (a timm state dict, .safetensors or .pth, loaded strictly; the classifier
head is dropped), ``timm/<name>.safetensors`` in the weights dir, or ``--weights hf-hub:timm/<repo>``
(read from the local Hugging Face cache when offline). Never a download in tests.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Sequence

import torch

from evalsuite.checkpoints import BackboneSpec
from evalsuite.contracts import Backbone, BackboneMeta, Features, Preprocess
from evalsuite.registry import BACKBONES, UnknownNameError

PREFIX = "timm:"


class TimmBackbone(Backbone):
    def __init__(self, name: str, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.is_vit = hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens")
        self.num_cls = int(getattr(model, "cls_token", None) is not None) if self.is_vit else 0  # EVA/BEiT: no has_class_token
        depth = len(model.blocks) if self.is_vit else len(model.feature_info)
        self.meta = BackboneMeta(
            name=f"{PREFIX}{name}", family="timm", patch_size=_patch_size(model, self.is_vit),
            embed_dim=model.num_features, depth=depth, num_cls_tokens=self.num_cls, preprocess=_preprocess(model),
            default_layers=tuple(range(depth - 4, depth)) if self.is_vit and depth >= 4 else tuple(range(depth)))

    def forward_features(self, images: torch.Tensor, layers: Sequence[int] | None = None, norm: bool = True) -> Features:
        resolved = self.resolve_layers(layers)
        if self.is_vit:
            out = self.model.forward_intermediates(images, indices=list(resolved), norm=norm, output_fmt="NCHW",
                                                   intermediates_only=True, return_prefix_tokens=True)
            # timm orders prefix tokens [class, registers…]: registers never leave the backbone
            return Features([spatial for spatial, _ in out], [prefix[:, : self.num_cls] for _, prefix in out], resolved)
        maps = self.model.forward_intermediates(images, indices=list(resolved), intermediates_only=True)
        return Features(list(maps), [m.new_zeros(m.shape[0], 0, m.shape[1]) for m in maps], resolved)

    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """timm's own pooled feature (``forward_head(pre_logits=True)``): the model's published readout."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


def _patch_size(model, is_vit: bool) -> int:
    if is_vit:
        size = model.patch_embed.patch_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    return int(model.feature_info[-1]["reduction"])


def _preprocess(model) -> Preprocess:
    cfg = model.pretrained_cfg
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    crop_pct = cfg.get("crop_pct", 0.875) or 1.0
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(size=size, mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                      interpolation=interpolation if interpolation in ("bicubic", "bilinear") else "bicubic",
                      resize="resize-crop", resize_size=int(size[0] / crop_pct))


@lru_cache(maxsize=1)
def _known() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def spec_for(model_name: str) -> BackboneSpec:
    """The registry entry of ``timm:<model_name>``; an unknown name or a model without
    ``forward_intermediates`` is one line (with timm's closest names)."""
    import timm

    base = model_name.split(".")[0]  # `vit_base_patch16_224.augreg_in21k` names a pretrained tag
    if base not in _known():
        close = difflib.get_close_matches(base, _known(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown timm model {model_name!r}.{hint} (timm {timm.__version__}; "
                               "`python -c 'import timm; print(timm.list_models(\"vit_*\"))'` lists them)")

    def build() -> TimmBackbone:
        try:  # ViTs take any multiple of the patch (the dense tasks crop other sizes than the pretraining one)
            model = timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=True)
        except TypeError:  # a family without that option (CNNs take any size anyway)
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
        if not hasattr(model, "forward_intermediates"):
            raise UnknownNameError(f"timm model {model_name!r} ({type(model).__name__}) has no forward_intermediates: "
                                   "evalsuite reads features through it (timm's ViT, ConvNeXt, ResNet, EVA, … have it)")
        return TimmBackbone(model_name, model)

    hub = timm.models.get_pretrained_cfg(model_name)
    classifier = (getattr(hub, "classifier", None) if hub else None) or "head"
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)  # distilled: (head, head_dist)
    return BackboneSpec(
        name=f"{PREFIX}{model_name}", family="timm", build=build,
        convert=lambda state: {f"model.{k}": v for k, v in state.items()},
        ignore=tuple(re.escape(f"model.{c}.") + ".*" for c in classifiers),  # the classifier only: num_classes=0
        weights_file=f"timm/{model_name}.safetensors", hf_repo=getattr(hub, "hf_hub_id", None) if hub else None)


BACKBONES.register_prefix(PREFIX, spec_for)
