"""The text side, for tasks that pair images with text (VQA, retrieval, Pixel-BERT pretraining).

The `Backbone` contract stays visual. A `TextEncoder` is a BERT-style transformer with its
tokenizer; given visual tokens as well (from `VisualEmbedding`), it runs them as a second segment
of the same sequence (single-stream fusion, as Pixel-BERT's cross-modal transformer does). Encoders
are registered in `TEXT_ENCODERS`:

* ``scratch``: a BERT initialised from scratch with a lower-cased WordPiece tokenizer fitted on the
  training texts (deterministic; what the Pixel-BERT pretraining objective uses);
* ``bert-local``: a BERT and its tokenizer from a local transformers directory (never downloaded).

A backbone family with a text side of its own (Pixel-BERT's pretraining checkpoint holds its BERT,
tokenizer and visual embedding) provides it through ``BackboneSpec.paired_text``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .registry import TEXT_ENCODERS

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def fit_wordpiece(texts: Sequence[str], vocab_size: int):
    """A lower-cased WordPiece tokenizer for ``texts``: ids 0..4 are the special tokens, then every
    character (alone and as a ``##`` continuation, so any word can be spelt), then whole words by
    frequency (ties alphabetical) up to ``vocab_size``. Deterministic by construction — the
    ``tokenizers`` trainer breaks ties in a hash order that changes from process to process."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = dict.fromkeys([*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)])
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word)
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, splitter
    return tokenizer


class VisualEmbedding(nn.Module):
    """Visual tokens (patch tokens or CNN feature-map pixels, B×N×C) into the text encoder's width:
    a linear projection plus learned row and column embeddings of each token's grid cell.

    BERT's embedding layer then adds the visual type embedding (segment 1) and one position
    embedding shared by every visual token (`joint_sequence`): where a token sits comes from its
    grid cell alone, so a random subset of tokens (Pixel-BERT's 100 sampled pixels in training) and
    all of them (at test) are embedded alike.
    """

    def __init__(self, in_dim: int, hidden: int, max_grid: int = 64):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.row, self.col = nn.Embedding(max_grid, hidden), nn.Embedding(max_grid, hidden)
        for table in (self.row, self.col):
            nn.init.normal_(table.weight, std=0.02)  # BERT's initializer_range

    @property
    def max_grid(self) -> int:
        return self.row.num_embeddings

    def forward(self, tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """``cells``: B×N×2 (row, column) of every token."""
        if cells.numel() and int(cells.max()) >= self.max_grid:
            raise ValueError(f"a {int(cells.max()) + 1}-cell grid side exceeds the visual embedding's {self.max_grid}")
        return self.proj(tokens) + self.row(cells[..., 0]) + self.col(cells[..., 1])


def grid_cells(height: int, width: int) -> torch.Tensor:
    """(h·w)×2 (row, column) of a feature map's tokens in raster order."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1)


def joint_sequence(words: torch.Tensor, mask: torch.Tensor, visual: torch.Tensor | None = None,
                   visual_mask: torch.Tensor | None = None, visual_position: int | None = None):
    """(embeddings, attention mask, token types, position ids) of ``[text ; visual]``: text at
    positions 0..L−1 with type 0, every visual token at ``visual_position`` (the text's maximum
    length, so it does not move with padding; default L) with type 1."""
    B, L = mask.shape
    visual_position = L if visual_position is None else visual_position
    positions = torch.arange(L, device=mask.device).expand(B, L)
    types = torch.zeros(B, L, dtype=torch.long, device=mask.device)
    if visual is None:
        return words, mask, types, positions
    N = visual.shape[1]
    visual_mask = torch.ones(B, N, dtype=torch.bool, device=mask.device) if visual_mask is None else visual_mask
    return (torch.cat([words, visual], dim=1), torch.cat([mask, visual_mask], dim=1),
            torch.cat([types, torch.ones(B, N, dtype=torch.long, device=mask.device)], dim=1),
            torch.cat([positions, torch.full((B, N), visual_position, device=mask.device)], dim=1))


class TextEncoder(nn.Module):
    """A tokenizer (a `tokenizers.Tokenizer`) and a transformers ``BertModel``.

    ``tokenize`` gives ``[CLS] … [SEP]`` ids padded to ``max_length``; ``forward`` returns the last
    hidden states of the text, or of ``[text ; visual]`` (`joint_sequence`).
    """

    def __init__(self, tokenizer, bert: nn.Module, max_length: int = 40):
        super().__init__()
        self.tokenizer, self.bert, self.max_length = tokenizer, bert, max_length
        vocab = tokenizer.get_vocab()
        self.cls_id, self.sep_id, self.pad_id = vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]

    @property
    def dim(self) -> int:
        return self.bert.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.bert.config.vocab_size

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids B×L, attention mask B×L) with L = ``max_length``; longer texts are truncated."""
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            tokens = [self.cls_id, *enc.ids[: self.max_length - 2], self.sep_id]
            ids[i, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != self.pad_id

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, visual: torch.Tensor | None = None,
                visual_mask: torch.Tensor | None = None, word_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states B×(L'+N)×D, where L' ≤ L drops the padding columns no text of the batch uses
        (exact: they are masked, and the visual tokens' position does not depend on L');
        ``word_embeds`` replaces the lookup of ``ids`` (e.g. for masking)."""
        used = max(1, int(mask.sum(dim=1).max()))
        ids, mask = ids[:, :used], mask[:, :used]
        words = self.bert.embeddings.word_embeddings(ids) if word_embeds is None else word_embeds[:, :used]
        embeds, mask, types, positions = joint_sequence(words, mask, visual, visual_mask, self.max_length)
        return self.bert(inputs_embeds=embeds, attention_mask=mask.long(), token_type_ids=types,
                         position_ids=positions).last_hidden_state


@dataclass(frozen=True)
class TextEncoderSpec:
    """``build(texts, **options)``: ``texts`` are the training texts (a tokenizer may be fitted on them)."""

    name: str
    build: Callable[..., TextEncoder]
    description: str = ""


def bert_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, max_position_embeddings=max_positions, type_vocab_size=2)


@torch.no_grad()
def init_bert(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """BERT's published initialisation (linear and embedding weights N(0, 0.02), biases 0, the padding
    row 0, LayerNorm 1/0), drawn by our own seeded generator in sorted-name order.

    Why not transformers' own: its ``_init_weights`` draws from the global RNG in an order and with
    rules that change between releases (the same cell gave 55.75 and 58.25 % VQA accuracy under two
    transformers versions), while what we train must be a function of the seed alone."""
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for _, module in sorted(model.named_modules(), key=lambda kv: kv[0]):
        for name, tensor in module.named_parameters(recurse=False):
            if id(tensor) in seen:  # tied weights (the MLM decoder shares the word embeddings)
                continue
            seen.add(id(tensor))
            if isinstance(module, nn.LayerNorm) or "LayerNorm" in type(module).__name__:
                tensor.fill_(1.0 if name == "weight" else 0.0)
            elif name == "weight":
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    tensor[module.padding_idx] = 0
            else:
                tensor.zero_()
    return model


def build_scratch(texts: Sequence[str], *, vocab_size: int = 30522, hidden: int = 768, layers: int = 12, heads: int = 12,
                  max_length: int = 40, seed: int = 0) -> TextEncoder:
    """A BERT from scratch (BERT-base by default), its WordPiece vocabulary fitted on ``texts`` and
    its weights a function of ``seed`` alone (`init_bert`)."""
    from transformers import BertModel

    if not texts:
        raise ValueError("a from-scratch text encoder fits its tokenizer on the training texts: there are none")
    tokenizer = fit_wordpiece(texts, vocab_size)
    config = bert_config(tokenizer.get_vocab_size(), hidden, layers, heads, max_length + 1)
    return TextEncoder(tokenizer, init_bert(BertModel(config, add_pooling_layer=False), seed), max_length)


def build_local(texts: Sequence[str] = (), *, path: str = "", max_length: int = 40) -> TextEncoder:
    """A BERT and its tokenizer from a local transformers directory (``config.json``, weights,
    ``tokenizer.json`` or ``vocab.txt``); nothing is downloaded."""
    from tokenizers import Tokenizer
    from transformers import BertModel

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text encoder bert-local: {folder / 'config.json'} not found (pass path=DIR, a "
                                "transformers BERT directory)")
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.txt").is_file():
        from tokenizers import models, normalizers, pre_tokenizers

        vocab = {w: i for i, w in enumerate((folder / "vocab.txt").read_text().splitlines())}
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    else:
        raise FileNotFoundError(f"text encoder bert-local: no tokenizer.json or vocab.txt in {folder}")
    bert = BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True)
    return TextEncoder(tokenizer, bert, max_length)


TEXT_ENCODERS.register("scratch", TextEncoderSpec("scratch", build_scratch,
                                                  "BERT from scratch, WordPiece fitted on the training texts"))
TEXT_ENCODERS.register("bert-local", TextEncoderSpec("bert-local", build_local,
                                                     "BERT + tokenizer from a local transformers directory (path=DIR)"))
