"""VQA v2 and image–text retrieval for any visual backbone: ``evalsuite run -t vqa|retrieval``.

Two protocols per task:

* ``adapter``: the backbone frozen; its visual tokens are extracted once (cached) and a cross-modal
  adapter (`model.CrossModal`) is trained on the train split, then scored on the report split.
* ``finetune``: Pixel-BERT's end-to-end protocol — backbone and text encoder trained together; by
  default the text encoder and visual embedding are the ones of the backbone's own pretraining
  checkpoint (``text=checkpoint``, Pixel-BERT's MLM+ITM pretraining).

``images=shuffled`` is the control: every image is replaced by another one (a fixed derangement) in
every split, so the model can only use the text; an adapter that uses the image beats it
(``evalsuite compare`` bounds the difference).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from evalsuite import engine
from evalsuite.cache import cached_features
from evalsuite.checkpoints import paired_text
from evalsuite.contracts import Backbone, DataSource, Metric, Preprocess, RunContext, Task, TaskConfig, TaskOutput
from evalsuite.data import folder_source, read_image
from evalsuite.params import ParamError, Params, param
from evalsuite.registry import TEXT_ENCODERS
from evalsuite.sampling import seeded
from evalsuite.text import VisualEmbedding, grid_cells
from tasks.vqa_retrieval.metrics import VQA_ANSWER_TYPES, retrieval_recall, vqa_accuracy

from .commands import score as score_command
from .data import RetrievalItem, VQAQuestion, answer_vocabulary, load_karpathy, load_vqa, soft_targets
from .model import CrossModal, RetrievalHeads, VQAHead, retrieval_loss, sample_tokens, token_grid, visual_tokens, vqa_loss

TEXT_SIDE = {"transformers": "core", "tokenizers": "core"}  # the BERT of the adapters and its WordPiece tokenizer
VQA = Task("vqa", version=2, family="vision-language", dataset="vqav2", mini_dataset="vqa-mini", tolerance=1.0,
           quickstart=({"protocol": "adapter"},), requires=TEXT_SIDE, commands={"score": score_command},
           description="VQA v2 through a Pixel-BERT-style cross-modal adapter; the official evaluator's accuracy")


class RetrievalTask(Task):
    def data_source(self, data, data_root, mini_size, mini_seed, config) -> DataSource | None:
        if data == "mini":
            return super().data_source(data, data_root, mini_size, mini_seed, config)
        return folder_source(config.params.dataset, data_root)  # [data_roots] keys: flickr30k, coco


RETRIEVAL = RetrievalTask("retrieval", version=2, family="vision-language", dataset="flickr30k",
                          mini_dataset="retrieval-mini", tolerance=5.0, quickstart=({"protocol": "adapter"},), requires=TEXT_SIDE,
                          description="image–text retrieval (Karpathy splits): dual-encoder recall and ITM re-ranking")

# Karpathy JSON, image folder, ALBEF's k_test (configs/Retrieval_{flickr,coco}.yaml)
KARPATHY = {"flickr30k": ("dataset_flickr30k.json", "flickr30k-images", 128), "coco": ("dataset_coco.json", ".", 256),
            "mini": ("dataset_mini.json", "images", 16)}


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterParams(Params):
    text: str = param("scratch", "text encoder: scratch (a BERT from scratch, WordPiece fitted on the training texts), "
                                 "bert-local (text_path=DIR), checkpoint (the backbone checkpoint's own: Pixel-BERT)",
                      choices=("scratch", "bert-local", "checkpoint"))
    text_path: str = param("", "bert-local: a transformers BERT directory (config.json, weights, tokenizer)")
    hidden: int = param(768, "scratch: transformer width (BERT-base)", min=8)
    layers: int = param(12, "scratch: transformer layers", min=1)
    heads: int = param(12, "scratch: attention heads", min=1)
    vocab_size: int = param(30522, "scratch: WordPiece vocabulary size", min=16)
    max_length: int = param(40, "text tokens, [CLS] and [SEP] included", min=3)
    pool: str = param("cls", "read each sequence out as its [CLS] state (Pixel-BERT, ALBEF) or the mean of its states",
                      choices=("cls", "mean"))
    visual_tokens: int = param(100, "visual tokens kept per example in training (Pixel-BERT's pixel random sampling); "
                                    "all at test", min=1)
    image_size: int = param(0, "square input side, the whole image squashed (no crop); 0 = the family's", min=0)
    images: str = param("paired", "paired, or shuffled: each image replaced by another (the text-only control)",
                        choices=("paired", "shuffled"))
    epochs: int = param(10, "epochs over the training split", min=1)
    batch_size: int = param(256, "training batch", min=1)
    lr: float = param(1e-4, "AdamW learning rate of the adapter", min=0, min_exclusive=True)
    weight_decay: float = param(0.01, "AdamW weight decay", min=0)
    warmup: float = param(0.05, "share of iterations with linear warm-up", min=0, max=1, max_exclusive=True)

    def check(self) -> None:
        if self.text == "scratch" and self.hidden % self.heads:
            raise ParamError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")
        if self.text == "bert-local" and not self.text_path:
            raise ParamError("text=bert-local needs text_path=DIR (a transformers BERT directory)")


@dataclass(frozen=True)
class VQAAdapter(AdapterParams):
    answers: int = param(3129, "answer vocabulary: the most frequent train answers", min=1)
    soft_target: str = param("official", "official: the evaluator's accuracy of each answer (0, .3, .6, .9, 1; "
                                         "BUTD/ViLT); min-count-3: min(1, count/3)", choices=("official", "min-count-3"))
    head_dropout: float = param(0.5, "dropout inside the answer MLP (SOHO)", min=0, max=1, max_exclusive=True)
    epochs: int = param(18, "epochs over the train questions (Pixel-BERT)", min=1)
    lr_steps: tuple[int, ...] = param((12, 16), "epochs after which the lr drops ×0.1 (Pixel-BERT)", min=1,
                                     increasing=True)
    test_dev: bool = param(False, "also answer test-dev2015 and write the official result file beside the record")


@dataclass(frozen=True)
class Finetune(Params):
    backbone_lr: float = param(1e-5, "AdamW learning rate of the backbone (BatchNorm statistics frozen)", min=0,
                               min_exclusive=True)


@dataclass(frozen=True)
class VQAFinetune(VQAAdapter, Finetune):
    text: str = param("checkpoint", "text encoder: checkpoint (the backbone checkpoint's own BERT: Pixel-BERT), "
                                    "scratch, or bert-local (text_path=DIR)", choices=("scratch", "bert-local", "checkpoint"))


@dataclass(frozen=True)
class RetrievalAdapter(AdapterParams):
    dataset: str = param("flickr30k", "Karpathy split: flickr30k (1K test) or coco (5K test)", choices=tuple(KARPATHY))
    embed_dim: int = param(256, "dual-encoder embedding width (ALBEF)", min=8)
    k_test: int = param(0, "candidates re-ranked by ITM per query; 0 = ALBEF's (Flickr30k 128, COCO 256)", min=0)


@dataclass(frozen=True)
class RetrievalFinetune(RetrievalAdapter, Finetune):
    text: str = param("checkpoint", "text encoder: checkpoint (the backbone checkpoint's own BERT: Pixel-BERT), "
                                    "scratch, or bert-local (text_path=DIR)", choices=("scratch", "bert-local", "checkpoint"))


# the mini world: a small BERT, the mini images' native 128 px, 32 sampled tokens
SMALL = {"hidden": 64, "layers": 2, "heads": 2, "vocab_size": 300, "batch_size": 32, "lr": 1e-3, "warmup": 0.1,
         "image_size": 128, "visual_tokens": 32}
VQA_MINI = {**SMALL, "epochs": 30, "lr_steps": (20, 26), "head_dropout": 0.1}
VQA_FINETUNE_MINI = {**VQA_MINI, "epochs": 12, "lr_steps": (8, 10), "backbone_lr": 1e-4}
# A contrastive loss on 400 pairs never breaks a from-scratch BERT's input-independent [CLS] (ITC stays at
# ln(batch)); the mean state learns (docs/protocols.md).
RETRIEVAL_MINI = {**SMALL, "dataset": "mini", "epochs": 10, "pool": "mean"}
RETRIEVAL_FINETUNE_MINI = {**RETRIEVAL_MINI, "epochs": 6, "backbone_lr": 1e-4}
TEXT_CHOICE = ("text", "images")  # leaderboard columns: which text encoder, and whether this is the control


# ---------------------------------------------------------------------------------------
# Images and their visual tokens
# ---------------------------------------------------------------------------------------
class ImageFiles(Dataset):
    """Item i → (image i through ``transform``, i)."""

    def __init__(self, paths: Sequence[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.paths[i])), i


def image_order(n: int, shuffled: bool, seed: int) -> torch.Tensor:
    """Which image stands in for image i: itself, or (the control) another one — a derangement
    drawn from ``seed``: a random cycle through all images."""
    if not shuffled or n < 2:
        return torch.arange(n)
    cycle = torch.randperm(n, generator=seeded(seed, 53))
    order = torch.empty(n, dtype=torch.long)
    order[cycle] = cycle.roll(-1)
    return order


class Tokens:
    """The visual tokens of one split's images: read from the feature cache (frozen backbone) or
    computed by the backbone being fine-tuned, a batch of images at a time. ``order`` maps each
    image to the one whose tokens it gets (the shuffled control)."""

    def __init__(self, files: ImageFiles, order: torch.Tensor, cached: torch.Tensor | None, backbone: Backbone,
                 ctx: RunContext):
        self.files, self.order, self.cached, self.backbone, self.ctx = files, order, cached, backbone, ctx

    def __len__(self) -> int:
        return len(self.files)

    def item(self, row: int):
        """Training input of image ``row``: its cached tokens, or its pixels for the backbone."""
        source = int(self.order[row])
        return ("tokens", self.cached[source].float()) if self.cached is not None else ("images", self.files[source][0])

    @torch.inference_mode()
    def batches(self, rows: Sequence[int] | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
        rows = list(range(len(self.files))) if rows is None else list(rows)
        size = self.ctx.batch_size
        self.backbone.eval()
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            sources = self.order[chunk]
            if self.cached is not None:
                tokens = self.cached[sources].float()
            else:
                images = torch.stack([self.files[int(s)][0] for s in sources]).to(self.ctx.device)
                with self.ctx.autocast():
                    tokens = visual_tokens(self.backbone, images).float()
            yield chunk, tokens.to(self.ctx.device)


def token_sources(backbone: Backbone, splits: dict[str, list[Path]], p, ctx: RunContext,
                  finetune: bool) -> tuple[dict[str, Tokens], tuple[int, int], Preprocess]:
    meta = backbone.meta
    size = p.image_size or meta.image_size[0]
    pre = Preprocess(size=(size, size), mean=meta.preprocess.mean, std=meta.preprocess.std,
                     interpolation=meta.preprocess.interpolation, resize="squash")
    transform = pre.transform()
    grid = token_grid(backbone, size, ctx.device)
    out = {}
    for split, paths in splits.items():
        files = ImageFiles(paths, transform)
        cached = None if finetune else cached_features(backbone, files, ctx, visual_tokens, "vl-tokens-v1", split, pre)[0]
        out[split] = Tokens(files, image_order(len(files), p.images == "shuffled", ctx.seed), cached, backbone, ctx)
    return out, grid, pre


def build_text(backbone: Backbone, p, texts: list[str], visual_dim: int, grid: tuple[int, int], seed: int):
    """(TextEncoder, VisualEmbedding) for ``p.text``; a from-scratch BERT is initialised from ``seed``."""
    max_grid = max(64, *grid)
    if p.text == "checkpoint":
        text, visual = paired_text(backbone)
        if visual.proj.in_features != visual_dim or visual.max_grid < max(grid):
            raise ParamError(f"the checkpoint's visual embedding takes {visual.proj.in_features}-d tokens on grids up to "
                             f"{visual.max_grid}, this run has {visual_dim}-d tokens on a {grid[0]}×{grid[1]} grid")
        return text, visual
    if p.text == "bert-local":
        text = TEXT_ENCODERS.get("bert-local").build(texts, path=p.text_path, max_length=p.max_length)
    else:
        text = TEXT_ENCODERS.get("scratch").build(texts, vocab_size=p.vocab_size, hidden=p.hidden, layers=p.layers,
                                                  heads=p.heads, max_length=p.max_length, seed=seed)
    return text, VisualEmbedding(visual_dim, text.dim, max_grid)


def visual_dim(backbone: Backbone, tokens: Tokens) -> int:
    if tokens.cached is not None:
        return tokens.cached.shape[2]
    return token_dim(backbone, tokens.files[0][0])


@torch.inference_mode()
def token_dim(backbone: Backbone, image: torch.Tensor) -> int:
    backbone.eval()
    device = next(backbone.parameters()).device
    return visual_tokens(backbone, image[None].to(device)).shape[2]


def freeze_batchnorm(module: torch.nn.Module) -> None:
    """BatchNorm layers keep their statistics while the backbone fine-tunes (small batches)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


class Adapter(torch.nn.Module):
    """The trained part: cross-modal transformer, task heads and, when fine-tuning, the backbone."""

    def __init__(self, cross: CrossModal, heads: torch.nn.Module, grid: tuple[int, int], keep: int,
                 backbone: Backbone | None):
        super().__init__()
        self.cross, self.heads, self.keep, self.backbone = cross, heads, keep, backbone
        self.register_buffer("cells", grid_cells(*grid), persistent=False)

    def visual(self, tokens=None, images=None, noise=None):
        """(tokens, cells) of a batch; in training a random ``keep`` of them per example."""
        if images is not None:
            freeze_batchnorm(self.backbone)
            tokens = visual_tokens(self.backbone, images)
        cells = self.cells.expand(tokens.shape[0], -1, -1)
        if noise is not None:
            tokens, cells = sample_tokens(tokens, cells, noise, self.keep)
        return tokens, cells


def mmengine_model(adapter: Adapter, loss):
    from mmengine.model import BaseModel

    class Trained(BaseModel):
        def __init__(self):
            super().__init__()
            self.adapter = adapter

        def forward(self, mode: str = "loss", **batch):
            return loss(self.adapter, batch)

    return Trained()


def train(adapter: Adapter, dataset: Dataset, loss, p, ctx: RunContext, schedule_for) -> Adapter:
    batch = min(p.batch_size, len(dataset))
    iters = engine.iterations(p.epochs, len(dataset) // batch, len(dataset), batch)
    groups = [{"params": [q for n, q in adapter.named_parameters() if not n.startswith("backbone.")], "lr": p.lr}]
    if adapter.backbone is not None:
        groups.append({"params": list(adapter.backbone.parameters()), "lr": p.backbone_lr})
    model = engine.train(mmengine_model(adapter, loss).to(ctx.device), dataset, collate=collate, batch_size=batch,
                         iters=iters, lr=p.lr, weight_decay=p.weight_decay, schedule=schedule_for(iters),
                         work_dir=ctx.work_dir or tempfile.mkdtemp(), seed=ctx.seed, resume=True,
                         checkpoint_interval=ctx.checkpoint_interval, amp_dtype=ctx.amp_dtype, param_groups=groups)
    adapter = model.adapter
    adapter.eval()
    return adapter


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def texts_in_batches(ids: torch.Tensor, mask: torch.Tensor, size: int) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    for start in range(0, len(ids), size):
        yield slice(start, start + size), ids[start : start + size], mask[start : start + size]


# ---------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------
def image_rows(questions: list[VQAQuestion]) -> tuple[list[Path], torch.Tensor]:
    """The split's distinct images (by id) and each question's row among them."""
    paths = {q.image_id: q.image for q in questions}
    ids = sorted(paths)
    row = {image_id: i for i, image_id in enumerate(ids)}
    return [paths[i] for i in ids], torch.tensor([row[q.image_id] for q in questions])


class VQATrain(Dataset):
    """Item (index, epoch): question ``index`` with its image's tokens (or pixels), soft targets and
    the noise that picks its training tokens (seeded by run seed, epoch and index)."""

    def __init__(self, questions, rows, ids, mask, vocab: list[str], rule: str, tokens: Tokens, n_tokens: int, seed: int):
        index = {a: i for i, a in enumerate(vocab)}
        self.targets = [soft_targets(q, index, rule) for q in questions]
        self.rows, self.ids, self.mask, self.answers = rows, ids, mask, len(vocab)
        self.tokens, self.n_tokens, self.seed = tokens, n_tokens, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        target = torch.zeros(self.answers)
        for a, score in self.targets[index].items():
            target[a] = score
        kind, visual = self.tokens.item(int(self.rows[index]))
        return {"ids": self.ids[index], "mask": self.mask[index], "targets": target, kind: visual,
                "noise": torch.rand(self.n_tokens, generator=seeded(self.seed, epoch, index, 47))}


def vqa_training_loss(adapter: Adapter, batch: dict) -> dict[str, torch.Tensor]:
    tokens, cells = adapter.visual(batch.get("tokens"), batch.get("images"), batch["noise"])
    logits = adapter.heads(adapter.cross.joint(batch["ids"], batch["mask"], tokens, cells))
    return {"loss": vqa_loss(logits, batch["targets"])}


@torch.inference_mode()
def answer(adapter: Adapter, tokens: Tokens, rows: torch.Tensor, ids, mask, vocab: list[str], ctx: RunContext) -> list[str]:
    """The predicted answer of every question (questions grouped by image, each image's tokens read once)."""
    adapter.eval()
    by_image: dict[int, list[int]] = {}
    for q, r in enumerate(rows.tolist()):
        by_image.setdefault(r, []).append(q)
    out = [""] * len(rows)
    for chunk, visual in tokens.batches(sorted(by_image)):
        qs = [q for r in chunk for q in by_image[r]]
        where = {r: i for i, r in enumerate(chunk)}
        pick = torch.tensor([where[int(rows[q])] for q in qs], device=ctx.device)
        for part in range(0, len(qs), ctx.batch_size):
            sel = pick[part : part + ctx.batch_size]
            qsel = qs[part : part + ctx.batch_size]
            v, cells = adapter.visual(visual[sel])
            with ctx.autocast():
                logits = adapter.heads(adapter.cross.joint(ids[qsel].to(ctx.device), mask[qsel].to(ctx.device), v, cells))
            for q, a in zip(qsel, logits.float().argmax(dim=1).tolist()):
                out[q] = vocab[a]
    return out


def vqa_protocol(finetune: bool):
    def run(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
        p = cfg.params
        root = ctx.data_root
        train_q, val_q = load_vqa(root, "train2014"), load_vqa(root, "val2014")
        dev_q = load_vqa(root, "test-dev2015", annotated=False) if p.test_dev else []
        vocab = answer_vocabulary(train_q, p.answers)
        (train_paths, train_rows), (val_paths, val_rows) = image_rows(train_q), image_rows(val_q)
        splits = {"train2014": train_paths, "val2014": val_paths}
        if dev_q:
            dev_paths, dev_rows = image_rows(dev_q)
            splits["test-dev2015"] = dev_paths
        tokens, grid, _ = token_sources(backbone, splits, p, ctx, finetune)
        text, visual = build_text(backbone, p, [q.question for q in train_q], visual_dim(backbone, tokens["train2014"]), grid,
                                  ctx.seed)
        adapter = Adapter(CrossModal(text, visual, p.pool), VQAHead(text.dim, len(vocab), p.head_dropout), grid, p.visual_tokens,
                          backbone if finetune else None)
        tok = lambda qs: text.tokenize([q.question for q in qs])
        (ids, mask), (val_ids, val_mask) = tok(train_q), tok(val_q)
        dataset = VQATrain(train_q, train_rows, ids, mask, vocab, p.soft_target, tokens["train2014"], grid[0] * grid[1],
                           ctx.seed)
        epochs = p.epochs
        schedule = lambda iters: engine.Schedule("step", iters, warmup_iters=int(p.warmup * iters), warmup_ratio=0.0,
                                                 milestones=tuple(s / epochs for s in p.lr_steps))
        adapter = train(adapter, dataset, vqa_training_loss, p, ctx, schedule)
        predicted = answer(adapter, tokens["val2014"], val_rows, val_ids, val_mask, vocab, ctx)
        scores = vqa_accuracy({q.question_id: a for q, a in zip(val_q, predicted)}, [q.annotation() for q in val_q])
        definition = ("VQA v2 official evaluator (vqaEval.py @ a013f00): normalisation only when the 10 answers differ, "
                      "mean over humans of min(1, matches among the other 9 / 3)")
        metrics = [Metric("accuracy", scores.overall, "val2014", True, primary=True, definition=definition)]
        per_sample = {"accuracy": [scores.per_question[q.question_id] for q in val_q]}
        for kind in VQA_ANSWER_TYPES:
            if kind in scores.per_answer_type:
                name = f"accuracy_{kind.replace('/', '_')}"
                metrics.append(Metric(name, scores.per_answer_type[kind], "val2014", True, definition=definition))
                per_sample[name] = [scores.per_question[q.question_id] for q in val_q if q.answer_type == kind]
        selected = {"answer_vocabulary": vocab, "per_question_type": scores.per_question_type,
                    "official": scores.official(), "train_questions": len(train_q), "val_questions": len(val_q),
                    "grid": list(grid), "selection": "last iteration"}
        artifacts = {}
        if dev_q:
            dev_ids, dev_mask = tok(dev_q)
            dev_answers = answer(adapter, tokens["test-dev2015"], dev_rows, dev_ids, dev_mask, vocab, ctx)
            artifacts["vqa_OpenEnded_mscoco_test-dev2015_evalsuite_results.json"] = json.dumps(
                [{"question_id": q.question_id, "answer": a} for q, a in zip(dev_q, dev_answers)])
            selected["test_dev_questions"] = len(dev_q)
        return TaskOutput(metrics, selected, per_sample=per_sample, artifacts=artifacts)

    return run


VQA.protocol("adapter", VQAAdapter, primary_metric="accuracy", higher_is_better=True,
             selection_split="none (last iteration)", report_split="val2014", mini=VQA_MINI, variant_keys=TEXT_CHOICE,
             leaderboard_metrics=("accuracy_yes_no", "accuracy_number", "accuracy_other"),
             description="frozen visual tokens + a single-stream cross-modal adapter; official VQA accuracy")(
    vqa_protocol(finetune=False))
VQA.protocol("finetune", VQAFinetune, primary_metric="accuracy", higher_is_better=True,
             selection_split="none (last iteration)", report_split="val2014", mini=VQA_FINETUNE_MINI,
             variant_keys=TEXT_CHOICE, leaderboard_metrics=("accuracy_yes_no", "accuracy_number", "accuracy_other"),
             description="Pixel-BERT end to end: backbone and the checkpoint's BERT fine-tuned together")(
    vqa_protocol(finetune=True))


# ---------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------
def flatten(items: list[RetrievalItem]) -> tuple[list[str], torch.Tensor]:
    """Every caption and the index of its image."""
    captions = [c for item in items for c in item.captions]
    return captions, torch.tensor([i for i, item in enumerate(items) for _ in item.captions])


class RetrievalTrain(Dataset):
    """Item (index, epoch): caption ``index`` with its image's tokens (or pixels), the image's index
    (captions of one image are all positives) and the noise for token sampling and negatives."""

    def __init__(self, txt2img, ids, mask, tokens: Tokens, n_tokens: int, seed: int):
        self.txt2img, self.ids, self.mask, self.tokens, self.n_tokens, self.seed = txt2img, ids, mask, tokens, n_tokens, seed

    def __len__(self) -> int:
        return len(self.txt2img)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        gen = seeded(self.seed, epoch, index, 59)
        kind, visual = self.tokens.item(int(self.txt2img[index]))
        return {"ids": self.ids[index], "mask": self.mask[index], "image_ids": self.txt2img[index], kind: visual,
                "noise": torch.rand(self.n_tokens, generator=gen), "uniform": torch.rand(2, generator=gen)}


def retrieval_training_loss(adapter: Adapter, batch: dict) -> dict[str, torch.Tensor]:
    tokens, cells = adapter.visual(batch.get("tokens"), batch.get("images"), batch["noise"])
    losses = retrieval_loss(adapter.cross, adapter.heads, batch["ids"], batch["mask"], tokens, cells, batch["image_ids"],
                            batch["uniform"])
    return {"loss": losses["loss_itc"] + losses["loss_itm"], **losses}


@torch.inference_mode()
def score_pairs(adapter: Adapter, tokens: Tokens, ids, mask, txt2img: torch.Tensor, k: int, ctx: RunContext):
    """(ITC similarities, ITM score matrices i2t and t2i): every pair by the dual encoder, then the top k
    candidates of every query re-scored by the ITM head (others −inf; ALBEF fills −100)."""
    adapter.eval()
    heads = adapter.heads
    text_emb = torch.cat([heads.text_embedding(adapter.cross.text_only(i.to(ctx.device), m.to(ctx.device)))
                          for _, i, m in texts_in_batches(ids, mask, ctx.batch_size)])
    image_emb = torch.cat([heads.image_embedding(adapter.cross.image_only(*adapter.visual(v)))
                           for _, v in tokens.batches()])
    sims = (image_emb @ text_emb.T).float().cpu()
    n_img, n_txt = sims.shape
    k_i2t, k_t2i = min(k, n_txt), min(k, n_img)
    i2t = torch.full((n_img, n_txt), float("-inf"))
    t2i = torch.full((n_txt, n_img), float("-inf"))
    pairs: dict[int, list[tuple[int, str]]] = {}  # image → (caption, direction) to score
    for img, top in enumerate(sims.topk(k_i2t, dim=1).indices.tolist()):
        pairs.setdefault(img, []).extend((t, "i2t") for t in top)
    for txt, top in enumerate(sims.T.topk(k_t2i, dim=1).indices.tolist()):
        for img in top:
            pairs.setdefault(img, []).append((txt, "t2i"))
    for chunk, visual in tokens.batches(sorted(pairs)):
        todo = [(slot, img, txt, d) for slot, img in enumerate(chunk) for txt, d in pairs[img]]
        for part in range(0, len(todo), ctx.batch_size):
            batch = todo[part : part + ctx.batch_size]
            slots = torch.tensor([b[0] for b in batch], device=ctx.device)
            txts = [b[2] for b in batch]
            v, cells = adapter.visual(visual[slots])
            with ctx.autocast():
                logit = heads.match_logit(adapter.cross.joint(ids[txts].to(ctx.device), mask[txts].to(ctx.device), v, cells))
            for (_, img, txt, d), s in zip(batch, logit.float().cpu().tolist()):
                if d == "i2t":
                    i2t[img, txt] = s
                else:
                    t2i[txt, img] = s
    return sims, i2t, t2i


def retrieval_protocol(finetune: bool):
    def run(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
        p = cfg.params
        json_name, folder, default_k = KARPATHY[p.dataset]
        root = ctx.data_root
        train_items = load_karpathy(root / json_name, root / folder, "train")
        test_items = load_karpathy(root / json_name, root / folder, "test")
        tokens, grid, _ = token_sources(backbone, {"train": [i.image for i in train_items],
                                                   "test": [i.image for i in test_items]}, p, ctx, finetune)
        train_captions, train_txt2img = flatten(train_items)
        test_captions, test_txt2img = flatten(test_items)
        text, visual = build_text(backbone, p, train_captions, visual_dim(backbone, tokens["train"]), grid, ctx.seed)
        adapter = Adapter(CrossModal(text, visual, p.pool), RetrievalHeads(text.dim, p.embed_dim), grid, p.visual_tokens,
                          backbone if finetune else None)
        ids, mask = text.tokenize(train_captions)
        dataset = RetrievalTrain(train_txt2img, ids, mask, tokens["train"], grid[0] * grid[1], ctx.seed)
        schedule = lambda iters: engine.Schedule("cosine", iters, warmup_iters=int(p.warmup * iters), warmup_ratio=0.0)
        adapter = train(adapter, dataset, retrieval_training_loss, p, ctx, schedule)
        test_ids, test_mask = text.tokenize(test_captions)
        k = p.k_test or default_k
        sims, i2t, t2i = score_pairs(adapter, tokens["test"], test_ids, test_mask, test_txt2img, k, ctx)
        metrics, per_sample = [], {}
        for prefix, (a, b), what in (("itm", (i2t, t2i), f"ITM re-ranking of the dual encoder's top {k}"),
                                     ("itc", (sims, sims.T.contiguous()), "dual encoder (cosine of [CLS] embeddings)")):
            values, samples = retrieval_recall(a, b, test_txt2img)
            for name, value in values.items():
                definition = (f"{what}; TR: an image's best-ranked caption, IR: a caption's image; ties: lower index first"
                              if name == "rsum" else None)
                metrics.append(Metric(f"{prefix}_{name}", value, "test", True, primary=f"{prefix}_{name}" == cfg.primary_metric,
                                      definition=definition))
                per_sample[f"{prefix}_{name}"] = samples[name]
        selected = {"test_images": len(test_items), "test_captions": len(test_captions), "train_images": len(train_items),
                    "train_captions": len(train_captions), "k_test": k, "grid": list(grid), "selection": "last iteration"}
        return TaskOutput(metrics, selected, per_sample=per_sample)

    return run


RETRIEVAL_BOARD = ("itm_tr_r1", "itm_ir_r1", "itc_rsum")
RETRIEVAL.protocol("adapter", RetrievalAdapter, primary_metric="itm_rsum", higher_is_better=True,
                   selection_split="none (last iteration)", report_split="test (Karpathy)", mini=RETRIEVAL_MINI,
                   variant_keys=("dataset", *TEXT_CHOICE), leaderboard_metrics=RETRIEVAL_BOARD,
                   description="frozen visual tokens + dual encoder and ITM re-ranking (ALBEF-style); R@1/5/10, RSUM")(
    retrieval_protocol(finetune=False))
RETRIEVAL.protocol("finetune", RetrievalFinetune, primary_metric="itm_rsum", higher_is_better=True,
                   selection_split="none (last iteration)", report_split="test (Karpathy)", mini=RETRIEVAL_FINETUNE_MINI,
                   variant_keys=("dataset", *TEXT_CHOICE), leaderboard_metrics=RETRIEVAL_BOARD,
                   description="Pixel-BERT end to end: backbone and the checkpoint's BERT fine-tuned together")(
    retrieval_protocol(finetune=True))

