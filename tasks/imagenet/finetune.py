"""ImageNet end-to-end training on mmengine's Runner, for the ``finetune`` (MAE's recipe), ``partial-ft``
(last K blocks, MAE §4.3) and ``ln-ft`` (LayerNorm parameters only) protocols.

MAE recipe (PROTOCOLS §2): global-average-pooled last-block patch tokens → ``fc_norm`` (fresh
LayerNorm, replacing the encoder's final norm) → linear head (trunc-normal std 2e-5); AdamW
(0.9, 0.999), wd 0.05, lr = blr·batch/256 with layer-wise decay, warm-up then cosine to min_lr;
drop-path; RandomResizedCrop (bicubic) + flip + RandAugment m9-mstd0.5-inc1 + random erasing
0.25 (timm's transforms), mixup 0.8 / cutmix 1.0 (switch 0.5) with label smoothing 0.1.

Every random draw is keyed: a sample's augmentation by (seed, epoch, index), drop-path and mixup by
(seed, iteration, rank), so a run resumed from a checkpoint ends in the state of an uninterrupted
one. The final model is evaluated once on val: no epoch is selected on the reported split.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from evalsuite import distributed, engine
from evalsuite.contracts import Backbone, Preprocess, RunContext
from evalsuite.finetune import (
    iteration_seed_hook,
    keyed_global_rng,
    param_groups,
    select_trainable,
    set_drop_path,
    transformer_blocks,
)
from tasks.imagenet.metrics import topk_accuracy

from .heads import top1_hits


class AugmentedImages(Dataset):
    """(index, epoch) → (augmented image, label), the augmentation's global RNGs keyed by the item."""

    def __init__(self, base: Dataset, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        image, label = self.base[index]
        with keyed_global_rng(self.seed, epoch, index, 13):
            return self.transform(image), label


def collate(batch):
    images, labels = zip(*batch)
    return torch.stack(images), torch.as_tensor(labels)


def train_transform(pre: Preprocess, p):
    """MAE's ``build_transform(is_train=True)``: timm's RandAugment pipeline at the backbone's input size."""
    from timm.data import auto_augment, create_transform

    transform = create_transform(pre.size, is_training=True, color_jitter=None, auto_augment=p.randaug or None,
                                 interpolation=pre.interpolation, re_prob=p.reprob, re_mode="pixel", re_count=1,
                                 mean=pre.mean, std=pre.std)
    for t in transform.transforms:  # Pillow ≥ 12 rejects the 0-bit posterize that m9-mstd0.5 reaches
        for op in getattr(t, "ops", ()):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = posterize_keeping_zero_bits
    return transform


def posterize_keeping_zero_bits(image, bits_to_keep: int, **kwargs):
    """timm's posterize, with 0 bits giving the black image that older Pillow (and TF's reference)
    produced instead of an error, so the recipe's augmentation distribution is unchanged."""
    from timm.data import auto_augment

    if bits_to_keep <= 0:
        return image.point(lambda _: 0)
    return auto_augment.posterize(image, bits_to_keep, **kwargs)


def classifier(backbone: Backbone, num_classes: int, p, seed: int):
    """An mmengine `BaseModel`: the backbone, MAE's global-pool readout and the loss of the recipe."""
    from mmengine.model import BaseModel
    from timm.data import Mixup

    use_mix = p.mixup > 0 or p.cutmix > 0
    mixup = Mixup(mixup_alpha=p.mixup, cutmix_alpha=p.cutmix, label_smoothing=p.label_smoothing,
                  num_classes=num_classes) if use_mix else None
    last = backbone.meta.depth - 1
    dim = backbone.meta.embed_dim

    class Classifier(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, num_classes)
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():  # MAE: trunc_normal_(head.weight, std=2e-5), zero bias
                self.head.weight.copy_(torch.nn.init.trunc_normal_(torch.empty(num_classes, dim), std=2e-5, a=-4e-5,
                                                                   b=4e-5, generator=gen))
                self.head.bias.zero_()

        def logits(self, images: torch.Tensor) -> torch.Tensor:
            tokens = self.backbone.forward_features(images, layers=[last], norm=False).patch[-1]
            return self.head(self.fc_norm(tokens.mean(dim=(2, 3))))

        def forward(self, images, labels=None, mode: str = "tensor"):
            if mode != "loss":
                return self.logits(images)
            if mixup is not None:
                images, soft = mixup(images, labels)
                return {"loss": F.cross_entropy(self.logits(images), soft)}
            return {"loss": F.cross_entropy(self.logits(images), labels, label_smoothing=p.label_smoothing)}

    return Classifier()


@torch.inference_mode()
def evaluate(model, dataset: Dataset, ctx: RunContext, batch_size: int) -> tuple[dict[int, float], torch.Tensor]:
    """(top-1/top-5 accuracy, per-image top-1 hits) of ``model`` on ``dataset``."""
    model.eval()
    logits, labels = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, num_workers=ctx.num_workers):
        with ctx.autocast():
            logits.append(model.logits(images.to(ctx.device)).float().cpu())
        labels.append(y)
    logits = torch.cat(logits)
    if not torch.isfinite(logits).all():  # argmax of NaN would still give an accuracy
        raise FloatingPointError("non-finite logits: the fine-tuning diverged")
    labels = torch.cat(labels)
    return topk_accuracy(logits, labels, ks=(1, 5)), top1_hits(logits, labels)


def run_end_to_end(backbone: Backbone, p, trainable: str, ctx: RunContext, train: Dataset, train_rows: torch.Tensor,
                   val: Dataset, num_classes: int, seed: int, preprocess: Preprocess) -> tuple[dict[int, float], dict, torch.Tensor]:
    """Train one seed (the ``trainable`` part of the backbone, see `select_trainable`) on
    ``train[train_rows]`` and score the final model on val: (accuracies, info, per-image top-1 hits)."""
    depth = len(transformer_blocks(backbone))
    select_trainable(backbone, trainable, getattr(p, "blocks", 0))
    if p.drop_path:
        set_drop_path(backbone, p.drop_path)
    model = classifier(backbone, num_classes, p, seed).to(ctx.device)
    world = distributed.world_size()
    pairs = 2 if p.mixup > 0 or p.cutmix > 0 else 1  # mixup/cutmix pair samples within each process's batch
    # a subset smaller than the batch trains on all of it, rounded down to what the processes can split
    batch_size = p.batch_size if p.batch_size <= len(train_rows) else len(train_rows) // (pairs * world) * (pairs * world)
    if batch_size < pairs * world:
        raise ValueError(f"{len(train_rows)} training images cannot fill one batch over {world} process(es)")
    if pairs == 2 and (batch_size // world) % 2:
        raise ValueError(f"mixup/cutmix pair samples within each process's batch: batch_size {batch_size} over "
                         f"{world} process(es) must give an even per-process batch")
    steps_per_epoch = max(1, len(train_rows) // batch_size)
    iters = engine.iterations(p.epochs, steps_per_epoch, len(train_rows), batch_size)
    lr = p.blr * batch_size / 256
    groups = param_groups(model, lr=lr, weight_decay=p.weight_decay, layer_decay=p.layer_decay, depth=depth)
    trainset = AugmentedImages(Subset(train, train_rows.tolist()), train_transform(preprocess, p), seed)
    work_dir = Path(ctx.work_dir or tempfile.mkdtemp(prefix="evalsuite-")) / f"seed-{seed}"
    # MAE's lr_sched: per iteration, linear warm-up from 0, then half-cosine to min_lr over the rest
    schedule = engine.Schedule("cosine", iters, warmup_iters=min(p.warmup_epochs * steps_per_epoch, iters - 1),
                               warmup_ratio=0.0, min_ratio=min(1.0, p.min_lr / lr))
    model = engine.train(model, trainset, collate=collate, batch_size=batch_size, iters=iters, lr=lr,
                         weight_decay=p.weight_decay, schedule=schedule, work_dir=work_dir, seed=seed, resume=True,
                         checkpoint_interval=ctx.checkpoint_interval, amp_dtype=ctx.amp_dtype, param_groups=groups,
                         hooks=[iteration_seed_hook(seed, distributed.rank())])
    acc, hits = evaluate(model, val, ctx, batch_size=ctx.batch_size)
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    return acc, {"iterations": iters, "lr": lr, "trainable_params": trainable, "epochs": math.ceil(iters / steps_per_epoch),
                 "batch_size": batch_size}, hits
