"""The cross-modal adapter (Pixel-BERT's single stream) and its VQA and retrieval heads.

Visual tokens — a ViT's last-block patch tokens (final norm on) or a CNN's last-stage pixels — pass
through `VisualEmbedding` (projection, 2-D grid position, visual type) and join the text in one BERT.
In training each example keeps a random subset of its visual tokens (Pixel-BERT's pixel random
sampling, 100 by default); at test every token is used.

* VQA: [CLS] (or the mean state, `CrossModal`) → Linear(H, 4H) → ReLU → Dropout → Linear(4H, answers) (SOHO's head; Pixel-BERT's
  successor from the same group), binary cross-entropy with soft targets, mean × answers (ViLT/SOHO).
* Retrieval: a dual encoder (text-only and image-only passes through the same BERT, [CLS] → 256-d,
  cosine) trained with ITC (in-batch, captions of the same image are all positives, learned
  temperature from 0.07), plus an ITM head (Linear(H, 2) on the joint [CLS]) trained on one hard
  negative caption and one hard negative image per pair, drawn ∝ softmax(similarity) as ALBEF does.
  At test the dual encoder scores all pairs and ITM re-ranks each query's top k (ALBEF's k_test).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalsuite.contracts import Backbone
from evalsuite.text import TextEncoder, VisualEmbedding


def visual_tokens(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """B×N×C: the last block's patch tokens (final norm on) or the last CNN stage's pixels, raster order."""
    return backbone.forward_features(images, norm=True).patch[-1].flatten(2).transpose(1, 2)


@torch.inference_mode()
def token_grid(backbone: Backbone, size: int, device: torch.device) -> tuple[int, int]:
    """(h, w) of the token map at a ``size``×``size`` input (one blank image through the backbone)."""
    backbone.eval()
    fmap = backbone.forward_features(torch.zeros(1, 3, size, size, device=device), norm=True).patch[-1]
    return tuple(fmap.shape[2:])


def sample_tokens(tokens: torch.Tensor, cells: torch.Tensor, noise: torch.Tensor, keep: int):
    """``keep`` distinct tokens per example, chosen by ``noise`` (B×N uniform): Pixel-BERT's pixel
    random sampling. All tokens when there are no more than ``keep``."""
    if tokens.shape[1] <= keep:
        return tokens, cells
    idx = noise.argsort(dim=1)[:, :keep]
    gather = lambda x: torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))
    return gather(tokens), gather(cells)


class CrossModal(nn.Module):
    """Text and visual tokens through one transformer, read out as one B×H vector per sequence:
    the [CLS] state (``pool="cls"``: Pixel-BERT, ALBEF, ViLT) or the mean over every text and visual
    token (``"mean"``). A BERT trained from scratch starts with a [CLS] state that hardly depends on
    the input, which a contrastive loss on a few hundred pairs never breaks (docs/protocols.md); the
    mean reads every token from the first step."""

    def __init__(self, text: TextEncoder, visual: VisualEmbedding, pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be cls or mean, got {pool!r}")
        self.text, self.visual, self.pool = text, visual, pool

    @property
    def dim(self) -> int:
        return self.text.dim

    def readout(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            return hidden[:, 0]
        n_visual = hidden.shape[1] - min(mask.shape[1], int(mask.sum(dim=1).max()))  # the encoder drops unused padding
        valid = torch.cat([mask[:, : hidden.shape[1] - n_visual],
                           torch.ones(hidden.shape[0], n_visual, dtype=torch.bool, device=hidden.device)], dim=1)
        weights = valid.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

    def joint(self, ids, mask, tokens, cells) -> torch.Tensor:
        return self.readout(self.text(ids, mask, visual=self.visual(tokens.float(), cells)), mask)

    def text_only(self, ids, mask) -> torch.Tensor:
        return self.readout(self.text(ids, mask), mask)

    def image_only(self, tokens, cells) -> torch.Tensor:
        """[CLS] followed by the visual tokens (no words)."""
        B = tokens.shape[0]
        ids = torch.full((B, 1), self.text.cls_id, dtype=torch.long, device=tokens.device)
        mask = torch.ones_like(ids, dtype=torch.bool)
        return self.readout(self.text(ids, mask, visual=self.visual(tokens.float(), cells)), mask)


class VQAHead(nn.Module):
    def __init__(self, hidden: int, answers: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * hidden, answers))

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.mlp(cls)


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE with logits against soft targets, mean over entries × answers (ViLT's and SOHO's scaling)."""
    return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]


class RetrievalHeads(nn.Module):
    def __init__(self, hidden: int, embed_dim: int = 256, temperature: float = 0.07):
        super().__init__()
        self.text_proj, self.image_proj = nn.Linear(hidden, embed_dim), nn.Linear(hidden, embed_dim)
        self.itm = nn.Linear(hidden, 2)
        self.temperature = nn.Parameter(torch.tensor(temperature))

    def text_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)

    def image_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(pooled), dim=-1)

    def match_logit(self, pooled: torch.Tensor) -> torch.Tensor:
        """ALBEF's re-ranking score: the raw ITM logit of the 'match' class."""
        return self.itm(pooled)[:, 1]


def pick_negatives(similarity: torch.Tensor, positives: torch.Tensor, uniform: torch.Tensor):
    """Per row, one column drawn ∝ softmax(similarity) over the non-positive columns, by inverse CDF
    of ``uniform`` (so the draw is a function of the data order, not of a global RNG). Returns
    (indices, valid): a row whose columns are all positive has no negative."""
    weights = F.softmax(similarity.float().masked_fill(positives, float("-inf")), dim=1).nan_to_num(0.0)
    valid = ~positives.all(dim=1)
    cdf = weights.cumsum(dim=1)
    picked = (cdf < uniform[:, None] * cdf[:, -1:]).sum(dim=1).clamp(max=similarity.shape[1] - 1)
    return picked, valid


def retrieval_loss(model: CrossModal, heads: RetrievalHeads, ids, mask, tokens, cells, image_ids, uniform):
    """ITC (both directions, soft targets over same-image positives) + ITM with hard negatives."""
    text_h, image_h = model.text_only(ids, mask), model.image_only(tokens, cells)
    t, v = heads.text_embedding(text_h), heads.image_embedding(image_h)
    temperature = heads.temperature.clamp(0.001, 0.5)
    sim_i2t, sim_t2i = v @ t.T / temperature, t @ v.T / temperature
    positives = image_ids[:, None] == image_ids[None, :]
    targets = positives.float() / positives.float().sum(dim=1, keepdim=True)
    itc = 0.5 * (-(F.log_softmax(sim_i2t, dim=1) * targets).sum(1).mean()
                 - (F.log_softmax(sim_t2i, dim=1) * targets).sum(1).mean())
    with torch.no_grad():
        neg_text, has_text = pick_negatives(sim_i2t, positives, uniform[:, 0])
        neg_image, has_image = pick_negatives(sim_t2i, positives, uniform[:, 1])
    pos = heads.itm(model.joint(ids, mask, tokens, cells))
    neg_t = heads.itm(model.joint(ids[neg_text], mask[neg_text], tokens, cells))  # image b, another caption
    neg_i = heads.itm(model.joint(ids, mask, tokens[neg_image], cells[neg_image]))  # caption b, another image
    logits = torch.cat([pos, neg_t[has_text], neg_i[has_image]])
    labels = torch.cat([torch.ones(len(pos), dtype=torch.long, device=pos.device),
                        torch.zeros(int(has_text.sum() + has_image.sum()), dtype=torch.long, device=pos.device)])
    return {"loss_itc": itc, "loss_itm": F.cross_entropy(logits, labels)}
