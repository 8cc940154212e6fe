"""The text side, for tasks that pair images with text (VQA, retrieval, Pixel-BERT pretraining).

The `Backbone` contract stays visual. A `TextEncoder` is a BERT-style transformer with its
tokenizer; given visual tokens as well, it runs them as a second segment of the same sequence
(single-stream fusion, as Pixel-BERT's cross-modal transformer does). Encoders are registered in
`TEXT_ENCODERS`:

* ``scratch``: a BERT initialised from scratch with a lower-cased WordPiece tokenizer fitted on the
  training texts (deterministic; what the Pixel-BERT pretraining objective uses);
* ``bert-local``: a BERT and its tokenizer from a local transformers directory (never downloaded).
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
    """A lower-cased WordPiece tokenizer fitted on ``texts`` (deterministic); ids 0..4 are the special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                         special_tokens=list(SPECIAL_TOKENS)))
    return tokenizer


class TextEncoder(nn.Module):
    """A tokenizer (a `tokenizers.Tokenizer`) and a transformers ``BertModel``.

    ``tokenize`` gives ``[CLS] … [SEP]`` ids padded to ``max_length``; ``forward`` returns the last
    hidden states of the text, or of ``[text ; visual]`` with token type 1 on the visual part.
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
        """Hidden states B×(L[+N])×D; ``word_embeds`` replaces the lookup of ``ids`` (e.g. for masking)."""
        words = self.bert.embeddings.word_embeddings(ids) if word_embeds is None else word_embeds
        types = torch.zeros_like(ids)
        if visual is not None:
            B, N = visual.shape[:2]
            visual_mask = torch.ones(B, N, dtype=torch.bool, device=visual.device) if visual_mask is None else visual_mask
            words = torch.cat([words, visual], dim=1)
            mask = torch.cat([mask, visual_mask], dim=1)
            types = torch.cat([types, torch.ones(B, N, dtype=torch.long, device=ids.device)], dim=1)
        return self.bert(inputs_embeds=words, attention_mask=mask.long(), token_type_ids=types).last_hidden_state


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


def build_scratch(texts: Sequence[str], *, vocab_size: int = 1000, hidden: int = 128, layers: int = 2, heads: int = 2,
                  max_length: int = 40, max_visual: int = 256) -> TextEncoder:
    """A BERT from scratch, its WordPiece vocabulary fitted on ``texts``."""
    from transformers import BertModel

    tokenizer = fit_wordpiece(texts, vocab_size)
    config = bert_config(tokenizer.get_vocab_size(), hidden, layers, heads, max_length + max_visual + 8)
    return TextEncoder(tokenizer, BertModel(config, add_pooling_layer=False), max_length)


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
