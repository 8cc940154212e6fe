"""ImageNet-1k classification protocols: frozen features (DINOv2 linear sweep, MAE's linear probe,
weighted k-NN, scikit-learn logistic regression) and end to end (fine-tuning, partial, LayerNorm-only).

Every protocol has its own parameters (all defaults below); the labelled subset (``Labels``) is
shared. Frozen protocols read features extracted once and cached; the eval transform is the
family's preprocessing for the protocol (Resize 256 + CenterCrop 224 bicubic for MAE/DINO, squash
256 for Pixio, Resize + CenterCrop 256 for Pixio's k-NN). ``seeds`` > 1 repeats the training part
(head init, batch order, held-out slice; the whole fine-tune for end-to-end protocols) and records
mean ± std.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from evalsuite.cache import cached_features
from evalsuite.contracts import Backbone, Metric, RunContext, Task, TaskConfig, TaskOutput
from evalsuite.params import ParamError, Params, param
from tasks.imagenet.metrics import knn_classify, topk_accuracy

from .data import labelled_rows, load_split
from .finetune import AugmentedImages
from .heads import (
    HeadConfig,
    dinov2_grid,
    heldout_split,
    linear_features,
    per_image_top1,
    select_and_report,
    top1_hits,
    train_linear_heads,
    train_linear_heads_augmented,
    train_mae_linear_head,
)

# v3: MAE's probe initialises its head untruncated (timm 0.3.2's absolute ±2 bounds); Pixio's k-NN reads
# Resize + CenterCrop 256 images; the linear sweep can train on augmented views (augment=true)
IMAGENET = Task("imagenet", version=3, family="classification", dataset="imagenet", mini_dataset="imagenet-mini",
                tolerance=0.5,
                # 3 probe seeds: on 324 mini training images the held-out selection alone moves top-1 by ±3 points
                quickstart=({"protocol": "linear", "seeds": 3},),
                description="ImageNet-1k top-1/top-5: frozen features (DINOv2 linear sweep, MAE probe, k-NN, logistic "
                            "regression) or trained end to end (fine-tuning, partial, LayerNorm-only)")


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Labels(Params):
    """Which training labels a run may use (all by default)."""

    label_fraction: float = param(1.0, "train on this seeded per-class fraction of the labels", min=0,
                                  min_exclusive=True, max=1)
    label_subset: str = param("", "a file of training image names (the standard 1 %/10 % lists)")
    subset_seed: int = param(0, "seed of the label_fraction subset (the same images for every backbone)", min=0)

    def check(self) -> None:
        if self.label_subset and self.label_fraction != 1.0:
            raise ParamError("give label_fraction or label_subset, not both")


@dataclass(frozen=True)
class LinearSweep(Labels):
    seeds: int = param(1, "repeat head training with seeds SEED … SEED+N−1", min=1)
    epochs: int = param(10, "epochs over the cached features (DINOv2: 12.5k iterations)", min=1)
    batch_size: int = param(1024, "batch of the sweep (lr × batch/256)", min=1)
    heldout_fraction: float = param(0.1, "share of train held out to select the head", min=0, max=1,
                                    min_exclusive=True, max_exclusive=True)
    augment: bool = param(False, "DINOv2's exact protocol: heads train on RandomResizedCrop + flip views extracted "
                                 "every iteration (no cache; slow) instead of cached centre-crop features")


@dataclass(frozen=True)
class MAELinear(Labels):
    seeds: int = param(1, "repeat the probe with seeds SEED … SEED+N−1", min=1)
    epochs: int = param(90, "epochs", min=1)
    batch_size: int = param(16384, "batch (MAE: 512 × 32 GPUs)", min=1)
    blr: float = param(0.1, "base lr; lr = blr·batch/256", min=0, min_exclusive=True)
    warmup_epochs: int = param(10, "linear warm-up epochs", min=0)

    def check(self) -> None:
        super().check()
        if self.warmup_epochs >= self.epochs:
            raise ParamError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")


@dataclass(frozen=True)
class KNN(Labels):
    ks: tuple[int, ...] = param((10, 20, 100, 200), "neighbour counts", min=1)
    primary_k: int = param(20, "the k whose top-1 is the primary metric", min=1)
    temperature: float = param(0.07, "vote weight exp(sim / T)", min=0, min_exclusive=True)

    def check(self) -> None:
        super().check()
        if self.primary_k not in self.ks:
            raise ParamError(f"primary_k={self.primary_k} must be one of ks={','.join(map(str, self.ks))}")


@dataclass(frozen=True)
class LogReg(Labels):
    c: tuple[float, ...] = param((0.01, 0.1, 1.0, 10.0), "inverse regularisation strengths to select from", min=0,
                                 min_exclusive=True)
    heldout_fraction: float = param(0.1, "share of train held out to select C", min=0, max=1, min_exclusive=True,
                                    max_exclusive=True)


@dataclass(frozen=True)
class FineTune(Labels):
    """MAE's ViT-B recipe; for L/H: epochs 50, blr 1e-3, layer_decay 0.75, drop_path 0.2 (0.3 for H)."""

    seeds: int = param(1, "repeat the whole fine-tune with seeds SEED … SEED+N−1", min=1)
    epochs: int = param(100, "epochs", min=1)
    batch_size: int = param(1024, "global batch (lr = blr·batch/256)", min=1)
    blr: float = param(5e-4, "base lr", min=0, min_exclusive=True)
    layer_decay: float = param(0.65, "layer-wise lr decay", min=0, max=1, min_exclusive=True)
    drop_path: float = param(0.1, "stochastic depth of the last block", min=0, max=1, max_exclusive=True)
    weight_decay: float = param(0.05, "AdamW weight decay", min=0)
    warmup_epochs: int = param(5, "linear warm-up epochs", min=0)
    min_lr: float = param(1e-6, "cosine floor", min=0)
    mixup: float = param(0.8, "mixup alpha (0: off)", min=0)
    cutmix: float = param(1.0, "cutmix alpha (0: off)", min=0)
    label_smoothing: float = param(0.1, "label smoothing", min=0, max=1, max_exclusive=True)
    randaug: str = param("rand-m9-mstd0.5-inc1", "timm RandAugment config ('' for none)")
    reprob: float = param(0.25, "random-erasing probability", min=0, max=1)


@dataclass(frozen=True)
class PartialFineTune(FineTune):
    blocks: int = param(4, "trainable last blocks (MAE §4.3)", min=0)


LINEAR_MINI = {"epochs": 100, "batch_size": 128}
# LARS steps are relative to ‖w‖: the mini world keeps MAE's absolute lr (0.1·16384/256 = 6.4) at batch 128
MAE_LINEAR_MINI = {"batch_size": 128, "blr": 12.8}
FINETUNE_MINI = {"epochs": 10, "batch_size": 32, "warmup_epochs": 1, "blr": 1e-3}
FROZEN = dict(primary_metric="top1", higher_is_better=True, report_split="val")


# ---------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------
def open_train_val(backbone: Backbone, cfg: TaskConfig, ctx: RunContext):
    """(train, val, labelled training rows): the splits with the family's transform for this protocol."""
    transform = backbone.meta.preprocess_for(cfg.protocol.name).transform()
    train, val = load_split(ctx.data_root, "train", transform), load_split(ctx.data_root, "val", transform)
    if train.classes != val.classes:
        raise ValueError("train and val have different class folders")
    if len(train.classes) < 2:
        raise ValueError(f"ImageNet at {ctx.data_root} has {len(train.classes)} class folder(s): a classifier needs 2 or more")
    p = cfg.params
    return train, val, labelled_rows(train, p.label_fraction, p.label_subset, p.subset_seed)


def frozen_linear_features(backbone: Backbone, cfg: TaskConfig, ctx: RunContext, train, val):
    if backbone.meta.num_cls_tokens == 0:
        raise ValueError(f"{backbone.meta.name} has no CLS tokens: the linear protocols read them; use --protocol knn")
    pre = backbone.meta.preprocess_for(cfg.protocol.name)
    feats, labels = cached_features(backbone, train, ctx, linear_features, "linear-v1", "train", pre)
    val_feats, val_labels = cached_features(backbone, val, ctx, linear_features, "linear-v1", "val", pre)
    return feats, labels, val_feats, val_labels


def dinov2_train_transform(backbone: Backbone, cfg: TaskConfig):
    """DINOv2's ``make_classification_train_transform``: RandomResizedCrop (bicubic, torchvision's
    default scale 0.08–1) to the eval size, horizontal flip ½, normalisation."""
    from torchvision import transforms as T

    pre = backbone.meta.preprocess_for(cfg.protocol.name)
    return T.Compose([T.RandomResizedCrop(pre.size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(0.5),
                      T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single seed)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(values) > 1 else None)


def seed_metrics(runs: list[dict], splits: dict[str, str]) -> list[Metric]:
    out = []
    for name, split in splits.items():
        mean, std = mean_std([r[name] for r in runs])
        out.append(Metric(name, mean, split, True, primary=name == "top1", std=std))
    return out


# ---------------------------------------------------------------------------------------
# Protocols on frozen features
# ---------------------------------------------------------------------------------------
@IMAGENET.protocol("linear", LinearSweep, selection_split="train (held-out slice)", mini=LINEAR_MINI,
                   description="DINOv2 linear grid: 52 heads trained in one pass on cached features", **FROZEN)
def linear_sweep(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
    p = cfg.params
    train, val, rows = open_train_val(backbone, cfg, ctx)
    feats, labels, val_feats, val_labels = frozen_linear_features(backbone, cfg, ctx, train, val)
    configs = dinov2_grid()
    runs, correct = [], []
    for seed in range(ctx.seed, ctx.seed + p.seeds):
        fit, held = heldout_split(len(rows), p.heldout_fraction, seed)
        fit, held = rows[fit], rows[held]
        if p.augment:
            views = AugmentedImages(load_split(ctx.data_root, "train", None), dinov2_train_transform(backbone, cfg), seed)
            heads = train_linear_heads_augmented(backbone, views, fit, len(train.classes), configs, epochs=p.epochs,
                                                 batch_size=p.batch_size, seed=seed, ctx=ctx, sample=feats[:1])
        else:
            heads = train_linear_heads(feats, labels, len(train.classes), configs, epochs=p.epochs,
                                       batch_size=p.batch_size, seed=seed, indices=fit)
        best, held_top1, acc, hits = select_and_report(configs, heads, feats[held].float(), labels[held],
                                                       val_feats.float(), val_labels)
        correct.append(hits)
        runs.append({"seed": seed, "top1": 100 * acc[1], "top5": 100 * acc[5], "heldout_top1": 100 * held_top1,
                     **asdict(configs[best])})
    selected = {k: runs[0][k] for k in ("n_blocks", "avgpool", "lr")} if len(runs) == 1 else {"per_seed": runs}
    training = "augmented views, extracted every iteration" if p.augment else "cached centre-crop features"
    return TaskOutput(seed_metrics(runs, {"top1": "val", "top5": "val", "heldout_top1": "train-heldout"}),
                      selected={**selected, "num_heads": len(configs), "labelled_images": len(rows), "training": training},
                      per_sample={"top1": per_image_top1(correct)})


@IMAGENET.protocol("mae-linear", MAELinear, selection_split="none (fixed recipe)", mini=MAE_LINEAR_MINI,
                   description="MAE's probe: BatchNorm (no affine) + linear on the CLS token, LARS, 90 epochs", **FROZEN)
def mae_linear(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
    """One fixed recipe, nothing to select: every labelled row trains, val is scored once. Like the
    sweep it reads cached centre-crop features, where MAE augments with RandomResizedCrop + flip."""
    p = cfg.params
    train, val, rows = open_train_val(backbone, cfg, ctx)
    feats, labels, val_feats, val_labels = frozen_linear_features(backbone, cfg, ctx, train, val)
    runs, correct = [], []
    for seed in range(ctx.seed, ctx.seed + p.seeds):
        config, W, b = train_mae_linear_head(feats, labels, len(train.classes), rows, epochs=p.epochs,
                                             batch_size=p.batch_size, blr=p.blr, warmup_epochs=p.warmup_epochs, seed=seed)
        logits = config.inputs(val_feats.float()) @ W + b
        acc = topk_accuracy(logits, val_labels, ks=(1, 5))
        runs.append({"seed": seed, "top1": 100 * acc[1], "top5": 100 * acc[5]})
        correct.append(top1_hits(logits, val_labels))
    selected = {"selection": "none (fixed recipe)", "labelled_images": len(rows), **({"per_seed": runs} if len(runs) > 1 else {})}
    return TaskOutput(seed_metrics(runs, {"top1": "val", "top5": "val"}), selected=selected,
                      per_sample={"top1": per_image_top1(correct)})


def knn_reduce(model: Backbone, images: torch.Tensor) -> torch.Tensor:
    return model.knn_embedding(images)


@IMAGENET.protocol("knn", KNN, selection_split="none (fixed k)",
                   description="weighted k-NN (k ∈ {10, 20, 100, 200}, T = 0.07) on the family's k-NN feature", **FROZEN)
def knn(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
    p = cfg.params
    train, val, rows = open_train_val(backbone, cfg, ctx)
    pre = backbone.meta.preprocess_for(cfg.protocol.name)
    feats, labels = cached_features(backbone, train, ctx, knn_reduce, "knn-v1", "train", pre)
    val_feats, val_labels = cached_features(backbone, val, ctx, knn_reduce, "knn-v1", "val", pre)
    scores = knn_classify(feats[rows].float(), labels[rows], val_feats.float(), len(train.classes), p.ks, p.temperature)
    metrics = [Metric(f"top1_k{k}" if k != p.primary_k else "top1", 100 * topk_accuracy(s, val_labels, (1,))[1], "val",
                      True, primary=k == p.primary_k) for k, s in scores.items()]
    return TaskOutput(metrics=metrics, selected={"k": p.primary_k, "temperature": p.temperature, "labelled_images": len(rows)},
                      per_sample={"top1": per_image_top1([top1_hits(scores[p.primary_k], val_labels)])})


@IMAGENET.protocol("logreg", LogReg, selection_split="train (held-out slice)",
                   description="scikit-learn logistic regression (a slow, trusted reference for the sweep)", **FROZEN)
def logreg(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
    """Logistic regression on the last block's mean CLS ⊕ mean patch token; C is chosen on the same
    held-out slice of train as the sweep's head."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    p = cfg.params
    train, val, rows = open_train_val(backbone, cfg, ctx)
    feats, labels, val_feats, val_labels = frozen_linear_features(backbone, cfg, ctx, train, val)
    x = HeadConfig(1, True, 0).inputs(feats.float()).numpy()
    xv = HeadConfig(1, True, 0).inputs(val_feats.float()).numpy()
    fit, held = heldout_split(len(rows), p.heldout_fraction, ctx.seed)
    fit, held = rows[fit], rows[held]
    scaler = StandardScaler().fit(x[fit])
    fitted = {c: LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x[fit]), labels[fit].numpy()) for c in p.c}
    held_acc = {c: m.score(scaler.transform(x[held]), labels[held].numpy()) for c, m in fitted.items()}
    best = max(held_acc, key=lambda c: (held_acc[c], -c))
    logits = torch.from_numpy(fitted[best].decision_function(scaler.transform(xv)))
    acc = topk_accuracy(logits, val_labels, ks=(1, 5))
    return TaskOutput(
        metrics=[Metric("top1", 100 * acc[1], "val", True, primary=True), Metric("top5", 100 * acc[5], "val", True),
                 Metric("heldout_top1", 100 * held_acc[best], "train-heldout", True)],
        selected={"C": best, "labelled_images": len(rows)},
        per_sample={"top1": per_image_top1([top1_hits(logits, val_labels)])},
    )


# ---------------------------------------------------------------------------------------
# End-to-end protocols
# ---------------------------------------------------------------------------------------
def end_to_end(trainable: str):
    """A protocol runner that fine-tunes the ``trainable`` part of the backbone (see
    `evalsuite.finetune.select_trainable`) with MAE's recipe and scores the final model."""

    def run(backbone: Backbone, cfg: TaskConfig, ctx: RunContext) -> TaskOutput:
        from .finetune import run_end_to_end

        p = cfg.params
        _, val, rows = open_train_val(backbone, cfg, ctx)
        train = load_split(ctx.data_root, "train", transform=None)  # PIL images: the recipe augments them
        runs, correct = [], []
        for seed in range(ctx.seed, ctx.seed + p.seeds):
            model = copy.deepcopy(backbone) if p.seeds > 1 else backbone
            acc, info, hits = run_end_to_end(model, p, trainable, ctx, train, rows, val, len(val.classes), seed,
                                             preprocess=backbone.meta.preprocess_for(cfg.protocol.name))
            runs.append({"seed": seed, "top1": 100 * acc[1], "top5": 100 * acc[5], **info})
            correct.append(hits)
        selected = {"selection": "final model (no epoch selection)", "labelled_images": len(rows),
                    **({k: v for k, v in runs[0].items() if k not in ("seed", "top1", "top5")} if len(runs) == 1
                       else {"per_seed": runs})}
        return TaskOutput(seed_metrics(runs, {"top1": "val", "top5": "val"}), selected=selected,
                          per_sample={"top1": per_image_top1(correct)})

    return run


END_TO_END = dict(selection_split="none (final model)", mini=FINETUNE_MINI, **FROZEN)
IMAGENET.protocol("partial-ft", PartialFineTune, description="MAE §4.3: the last K blocks + the readout train",
                  **END_TO_END)(end_to_end("last_blocks"))
IMAGENET.protocol("ln-ft", FineTune, description="every LayerNorm + the readout train", **END_TO_END)(end_to_end("layernorm"))
IMAGENET.protocol("finetune", FineTune, description="MAE's fine-tuning recipe (global pool, fc_norm, layer decay)",
                  **END_TO_END)(end_to_end("all"))
