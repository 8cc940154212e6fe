"""Pixel-BERT's visual encoder (Huang et al. 2020): a torchvision ResNet/ResNeXt without its classifier.

The feature map pixels are Pixel-BERT's visual tokens. ``forward_features`` returns stage maps:
layer index s = 0..3 is torchvision's ``layer{s+1}`` (strides 4, 8, 16, 32); ``cls`` is empty
(B×0×C) and ``norm`` has no effect (a CNN has no final norm). Checkpoints use torchvision/timm
ResNet keys; an ImageNet classifier's ``fc`` is dropped on purpose.

Our pretraining checkpoints also hold the cross-modal side (BERT, tokenizer, visual embedding):
`paired_text` rebuilds it, so VQA and retrieval can fine-tune CNN and BERT together, as the paper does.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from evalsuite.checkpoints import BackboneSpec, CheckpointError, load_strict, read_state_dict, register_backbone
from evalsuite.contracts import Backbone, BackboneMeta, Features
from evalsuite.text import SPECIAL_TOKENS, TextEncoder, VisualEmbedding, fit_wordpiece, grid_cells, init_bert, joint_sequence

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
                        pretrain=partial(PixelBERTObjective, **(objective or {})), paired_text=paired_text)


def paired_text(path: Path) -> tuple[TextEncoder, VisualEmbedding]:
    """The text encoder (BERT + tokenizer) and visual embedding of our pretraining checkpoint at ``path``,
    loaded strictly (only the pooler, which the pretraining's ITM head read, is left out)."""
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    checkpoint = read_state_dict(path)
    if not {"tokenizer", "text_config", "max_text"} <= set(checkpoint):
        raise CheckpointError(f"{path} has no text side (BERT, tokenizer): it is not a Pixel-BERT pretraining checkpoint "
                              "written by `evalsuite pretrain` — use text=scratch or text=bert-local")
    state = checkpoint["model"]
    bert = BertModel(BertConfig.from_dict(json.loads(checkpoint["text_config"])), add_pooling_layer=False)
    load_strict(bert, {k.removeprefix("bert.bert."): v for k, v in state.items() if k.startswith("bert.bert.")},
                ignore=(r"pooler\..*",), source=f"{path} (BERT)")
    width = state["visual_proj.proj.weight"].shape[1]
    visual = VisualEmbedding(width, bert.config.hidden_size, state["visual_proj.row.weight"].shape[0])
    load_strict(visual, {k.removeprefix("visual_proj."): v for k, v in state.items() if k.startswith("visual_proj.")},
                source=f"{path} (visual embedding)")
    return TextEncoder(Tokenizer.from_str(checkpoint["tokenizer"]), bert, int(checkpoint["max_text"])), visual




# ---------------------------------------------------------------------------------------
# Pretraining objective (Huang et al. 2020): MLM + ITM over caption tokens and CNN pixels
# ---------------------------------------------------------------------------------------
def pixel_indices(noise: torch.Tensor, count: int, n: int) -> torch.Tensor:
    """B×n distinct indices into ``count`` feature-map pixels, chosen by ``noise`` (B×≥count)."""
    if n > count:
        raise ValueError(f"cannot sample {n} pixels from a feature map of {count}")
    return noise[:, :count].argsort(dim=1)[:, :n]


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
    """CNN encoder + BERT over [caption tokens ; sampled pixels] (`VisualEmbedding`: projection, grid
    position, visual type), the same sequence the VQA and retrieval adapters build.

    ITM: a caption is swapped for another sample's with probability 0.5 (label 1 = not matched);
    MLM is applied to matched pairs only. The BERT is built in `prepare`, once the tokenizer is fitted;
    the checkpoint keeps the tokenizer and BERT config (`checkpoint_extras`) for `paired_text`.
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
        self.visual_proj = VisualEmbedding(encoder.meta.embed_dim, hidden)
        self.tokenizer = None
        self.bert = None

    def prepare(self, dataset, seed: int) -> None:
        from transformers import BertConfig, BertForPreTraining

        self.tokenizer = fit_wordpiece(dataset.captions, self.vocab_size)
        vocab = self.tokenizer.get_vocab_size()
        cfg = BertConfig(vocab_size=vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                         num_attention_heads=self.heads, intermediate_size=4 * self.hidden,
                         max_position_embeddings=self.max_text + 1, type_vocab_size=2)
        self.bert = init_bert(BertForPreTraining(cfg), seed).to(self.visual_proj.proj.weight.device)

    def checkpoint_extras(self) -> dict:
        return {"tokenizer": self.tokenizer.to_str(), "text_config": self.bert.config.to_json_string(),
                "max_text": self.max_text}

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
        h, w = fmap.shape[2:]
        n = min(self.n_pixels, h * w)  # tiny inputs have fewer than 100 pixels
        idx = pixel_indices(noise[:, 2 + 3 * L :], h * w, n)
        pixels = torch.gather(fmap.flatten(2).transpose(1, 2), 1, idx[..., None].expand(-1, -1, fmap.shape[1]))
        visual = self.visual_proj(pixels, grid_cells(h, w).to(device)[idx])
        embeds, mask, types, positions = joint_sequence(self.bert.bert.embeddings.word_embeddings(inputs), attention, visual,
                                                        visual_position=L)
        out = self.bert(inputs_embeds=embeds, attention_mask=mask.long(), token_type_ids=types, position_ids=positions,
                        labels=torch.cat([mlm_labels, torch.full((B, n), -100, device=device)], 1),
                        next_sentence_label=swap.long())
        return {"loss": out.loss}


register_backbone(make_spec("pixelbert-r50", Bottleneck, [3, 4, 6, 3], 2048, "pixelbert_r50.pth"))
# ResNeXt-152 32×8d: bottleneck stages 3-8-36-3 (torchvision has no builder for it)
register_backbone(make_spec("pixelbert-x152", Bottleneck, [3, 8, 36, 3], 2048, "pixelbert_x152.pth", groups=32, width_per_group=8))
# CPU twin: a 2-layer, 128-wide cross-modal BERT.
register_backbone(make_spec("pixelbert-r18", BasicBlock, [2, 2, 2, 2], 512, None,
                            objective={"hidden": 128, "layers": 2, "heads": 2, "vocab_size": 500}))
