"""Pixel-BERT's visual encoder (Huang et al. 2020): a torchvision ResNet/ResNeXt without its classifier.

The feature map pixels are Pixel-BERT's visual tokens. ``forward_features`` returns stage maps:
layer index s = 0..3 is torchvision's ``layer{s+1}`` (strides 4, 8, 16, 32); ``cls`` is empty
(B×0×C) and ``norm`` has no effect (a CNN has no final norm). Checkpoints use torchvision/timm
ResNet keys; an ImageNet classifier's ``fc`` is dropped on purpose.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import Backbone, BackboneMeta, Features
from evalsuite.text import SPECIAL_TOKENS, fit_wordpiece

from .vit import preprocess_imagenet

# Dropped on purpose: an ImageNet classifier's fc, and the cross-modal part of our pretraining checkpoints.
CLASSIFIER = (r"fc\.weight", r"fc\.bias", r"bert\..*", r"visual_proj\..*")


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
    return {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}


def make_spec(name: str, block, layers: list[int], width: int, file: str | None, groups: int = 1,
              width_per_group: int = 64, objective: dict | None = None) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="pixelbert", patch_size=32, embed_dim=width, depth=4, num_cls_tokens=0,
                        preprocess=preprocess_imagenet(224), default_layers=(0, 1, 2, 3))
    return BackboneSpec(name=name, family="pixelbert",
                        build=lambda: PixelBERTResNet(meta, block, layers, groups, width_per_group),
                        convert=convert, ignore=CLASSIFIER, weights_file=file, random_by_default=file is None,
                        pretrain=partial(PixelBERTObjective, **(objective or {})))




# ---------------------------------------------------------------------------------------
# Pretraining objective (Huang et al. 2020): MLM + ITM over caption tokens and CNN pixels
# ---------------------------------------------------------------------------------------
def sample_pixels(fmap: torch.Tensor, n: int, noise: torch.Tensor) -> torch.Tensor:
    """B×C×h×w → B×n×C: ``n`` distinct feature-map pixels per image, chosen by ``noise`` (B×≥h·w)."""
    B, C, h, w = fmap.shape
    if n > h * w:
        raise ValueError(f"cannot sample {n} pixels from a {h}×{w} feature map")
    idx = noise[:, : h * w].argsort(dim=1)[:, :n]
    return torch.gather(fmap.flatten(2).transpose(1, 2), 1, idx[..., None].expand(-1, -1, C))


def mlm_mask(ids: torch.Tensor, candidates: torch.Tensor, noise: torch.Tensor, vocab_size: int, mask_id: int,
             prob: float = 0.15, first_regular_id: int = len(SPECIAL_TOKENS)) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each candidate token is chosen with ``prob``; chosen → 80 % [MASK], 10 % a random
    regular token, 10 % unchanged. ``noise`` is B×L×3 uniform. Returns (inputs, labels with −100)."""
    chosen = candidates & (noise[..., 0] < prob)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = ids.clone()
    replace = chosen & (noise[..., 1] < 0.8)
    randomise = chosen & (noise[..., 1] >= 0.8) & (noise[..., 1] < 0.9)
    inputs[replace] = mask_id
    random_ids = first_regular_id + (noise[..., 2] * (vocab_size - first_regular_id)).long().clamp(max=vocab_size - 1 - first_regular_id)
    inputs[randomise] = random_ids[randomise]
    return inputs, labels


class PixelBERTObjective(nn.Module):
    """CNN encoder + BERT over [caption tokens ; sampled pixels] with a visual type embedding.

    ITM: a caption is swapped for another sample's with probability 0.5 (label 1 = not matched);
    MLM is applied to matched pairs only. The BERT is built in `prepare`, once the tokenizer is fitted.
    """

    uses_captions = True

    def __init__(self, encoder: PixelBERTResNet, *, hidden: int = 768, layers: int = 12, heads: int = 12,
                 vocab_size: int = 30522, max_text: int = 40, n_pixels: int = 100, mlm_prob: float = 0.15,
                 image_size: tuple[int, int] | None = None):
        super().__init__()
        self.encoder = encoder
        self.hidden, self.layers, self.heads, self.vocab_size = hidden, layers, heads, vocab_size
        self.max_text, self.n_pixels, self.mlm_prob = max_text, n_pixels, mlm_prob
        self.image_size = tuple(image_size or encoder.meta.image_size)
        self.visual_proj = nn.Linear(encoder.meta.embed_dim, hidden)
        self.tokenizer = None
        self.bert = None

    def prepare(self, dataset) -> None:
        from transformers import BertConfig, BertForPreTraining

        self.tokenizer = fit_wordpiece(dataset.captions, self.vocab_size)
        vocab = self.tokenizer.get_vocab_size()
        cfg = BertConfig(vocab_size=vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                         num_attention_heads=self.heads, intermediate_size=4 * self.hidden,
                         max_position_embeddings=self.max_text + self.n_pixels + 8, type_vocab_size=2)
        self.bert = BertForPreTraining(cfg).to(self.visual_proj.weight.device)

    def augment(self, image, gen: torch.Generator) -> torch.Tensor:
        """Resize to the encoder's size; no flip (captions say left and right)."""
        from evalsuite.pretrain import to_normalised_tensor

        pre = self.encoder.meta.preprocess
        return to_normalised_tensor(image.resize(self.image_size[::-1], Image.BICUBIC), pre.mean, pre.std)

    def noise_shape(self, batch: int, grid: tuple[int, int]) -> tuple[int, int]:
        return batch, 2 + 3 * self.max_text + grid[0] * grid[1]

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(captions), self.max_text, dtype=torch.long)  # [PAD] = 0
        for i, enc in enumerate(self.tokenizer.encode_batch(list(captions))):
            tokens = [SPECIAL_TOKENS.index("[CLS]")] + enc.ids[: self.max_text - 2] + [SPECIAL_TOKENS.index("[SEP]")]
            ids[i, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != 0

    def forward(self, batch, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        images, captions = batch
        B, L, device = images.shape[0], self.max_text, images.device
        swap = noise[:, 0] < 0.5  # ITM negatives
        other = (torch.arange(B, device=device) + 1 + (noise[:, 1] * (B - 1)).long().clamp(max=B - 2)) % B
        paired = [captions[int(other[i])] if swap[i] else captions[i] for i in range(B)]
        ids, attention = (t.to(device) for t in self.encode_text(paired))
        candidates = attention & (ids >= len(SPECIAL_TOKENS)) & ~swap[:, None]
        inputs, mlm_labels = mlm_mask(ids, candidates, noise[:, 2 : 2 + 3 * L].reshape(B, L, 3), self.bert.config.vocab_size,
                                      SPECIAL_TOKENS.index("[MASK]"), self.mlm_prob)
        fmap = self.encoder.forward_features(images).patch[-1]
        n = min(self.n_pixels, fmap.shape[2] * fmap.shape[3])  # tiny inputs have fewer than 100 pixels
        pixels = self.visual_proj(sample_pixels(fmap, n, noise[:, 2 + 3 * L :]))
        words = self.bert.bert.embeddings.word_embeddings(inputs)
        out = self.bert(inputs_embeds=torch.cat([words, pixels], dim=1),
                        attention_mask=torch.cat([attention, torch.ones(B, n, dtype=torch.bool, device=device)], 1).long(),
                        token_type_ids=torch.cat([torch.zeros_like(ids), torch.ones(B, n, dtype=torch.long, device=device)], 1),
                        labels=torch.cat([mlm_labels, torch.full((B, n), -100, device=device)], 1),
                        next_sentence_label=swap.long())
        return {"loss": out.loss}


register_backbone(make_spec("pixelbert-r50", Bottleneck, [3, 4, 6, 3], 2048, "pixelbert_r50.pth"))
# ResNeXt-152 32×8d: bottleneck stages 3-8-36-3 (torchvision has no builder for it)
register_backbone(make_spec("pixelbert-x152", Bottleneck, [3, 8, 36, 3], 2048, "pixelbert_x152.pth", groups=32, width_per_group=8))
# CPU twin: a 2-layer, 128-wide cross-modal BERT.
register_backbone(make_spec("pixelbert-r18", BasicBlock, [2, 2, 2, 2], 512, None,
                            objective={"hidden": 128, "layers": 2, "heads": 2, "vocab_size": 500}))
