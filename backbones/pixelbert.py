"""Pixel-BERT's visual encoder (Huang et al. 2020): a torchvision ResNet/ResNeXt without its classifier.

The feature map pixels are Pixel-BERT's visual tokens. ``forward_features`` returns stage maps:
layer index s = 0..3 is torchvision's ``layer{s+1}`` (strides 4, 8, 16, 32); ``cls`` is empty
(B×0×C) and ``norm`` has no effect (a CNN has no final norm). Checkpoints use torchvision/timm
ResNet keys; an ImageNet classifier's ``fc`` is dropped on purpose.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import Backbone, BackboneMeta, Features

from .vit import preprocess_imagenet

CLASSIFIER = (r"fc\.weight", r"fc\.bias")


class PixelBERTResNet(ResNet, Backbone):
    def __init__(self, meta: BackboneMeta, block, layers: list[int], groups: int = 1, width_per_group: int = 64):
        super().__init__(block, layers, groups=groups, width_per_group=width_per_group)
        del self.fc
        self.stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        self.meta = dataclasses.replace(meta, num_params=sum(p.numel() for p in self.parameters()))
        self.to(memory_format=torch.channels_last)

    def forward_features(self, images: torch.Tensor, layers: Sequence[int] | None = None, norm: bool = True) -> Features:
        take = self.resolve_layers(layers)
        x = images.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for stage in self.stages[: max(take) + 1]:
            x = stage(x)
            maps.append(x)
        patch = [maps[i].contiguous() for i in take]
        cls = [m.new_zeros(m.shape[0], 0, m.shape[1]) for m in patch]
        return Features(patch=patch, cls=cls, layers=take)

    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images).patch[-1].mean(dim=(2, 3))


def convert(state: dict) -> dict:
    state = state.get("model", state.get("state_dict", state))
    return {k.removeprefix("module."): v for k, v in state.items()}


def make_spec(name: str, block, layers: list[int], width: int, file: str | None, groups: int = 1,
              width_per_group: int = 64) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="pixelbert", patch_size=32, embed_dim=width, depth=4, num_cls_tokens=0,
                        preprocess=preprocess_imagenet(224), default_layers=(0, 1, 2, 3))
    return BackboneSpec(name=name, family="pixelbert",
                        build=lambda: PixelBERTResNet(meta, block, layers, groups, width_per_group),
                        convert=convert, ignore=CLASSIFIER, weights_file=file, random_by_default=file is None)


register_backbone(make_spec("pixelbert-r50", Bottleneck, [3, 4, 6, 3], 2048, "pixelbert_r50.pth"))
# ResNeXt-152 32×8d: bottleneck stages 3-8-36-3 (torchvision has no builder for it)
register_backbone(make_spec("pixelbert-x152", Bottleneck, [3, 8, 36, 3], 2048, "pixelbert_x152.pth", groups=32, width_per_group=8))
register_backbone(make_spec("pixelbert-r18", BasicBlock, [2, 2, 2, 2], 512, None))
