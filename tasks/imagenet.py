"""ImageNet-1k classification on frozen features: the DINOv2 linear sweep and weighted k-NN.

Data: ImageFolder ``train/<wnid>/*`` and ``val/<wnid>/*``; eval transform = the backbone's own
preprocessing (Resize 256 + CenterCrop 224 bicubic for MAE/DINO, squash 256 for Pixio). Low-shot
runs train on a labelled subset of train: ``label_fraction`` (seeded per class by ``subset_seed``,
the same images for every backbone and run seed) or ``label_subset``, a file of image names in
the format of the standard 1 %/10 % lists (SimCLR's ``1percent.txt``: one ``n01440764_10026.JPEG``
per line).

Linear protocol (DINOv2): 52 heads = n_last_blocks {1, 4} × avgpool {no, yes} × 13 learning
rates, all trained together in one pass over the extracted features (SGD momentum 0.9, cosine,
lr × batch/256). Unlike DINOv2, the head is chosen on a seeded held-out slice of train and
val is evaluated once, for that head only. ``seeds`` > 1 repeats head training (init, batch
order, held-out slice) on the same cached features and records mean ± std over seeds.

MAE's linear probe (``mae-linear``, the protocol of MAE's published linear numbers): BatchNorm
without affine + linear on the last block's CLS token, LARS, 90 epochs; a fixed recipe, so nothing
is selected. Like the sweep it reads cached centre-crop features, where MAE augments with
RandomResizedCrop + flip.

End-to-end protocols (``finetune``, ``partial-ft``, ``ln-ft``): see `tasks.imagenet_ft`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import ImageFolder

from evalsuite.contracts import Backbone, Metric, RunContext, TaskOutput, TaskSpec
from evalsuite.data import DataNotFoundError
from evalsuite.cache import cached_features
from evalsuite.data import manifest_sha256
from evalsuite.metrics import knn_classify, topk_accuracy
from evalsuite.registry import TASKS
from evalsuite.sampling import seeded

LINEAR_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
KNN_KS = (10, 20, 100, 200)
N_LAST = 4  # CLS of the last 4 blocks are extracted; heads read the last 1 or all 4

SPEC = TaskSpec(
    name="imagenet", version=2, family="classification", primary_metric="top1", higher_is_better=True,
    tolerance=0.5, selection_split="train (held-out slice)", report_split="val", dataset="imagenet",
    mini_dataset="imagenet-mini",
    params={"protocol": "linear", "label_fraction": 1.0, "label_subset": "", "subset_seed": 0, "seeds": 1,
            # linear sweep (on cached features)
            "epochs": 10, "batch_size": 1024, "heldout_fraction": 0.1,
            "knn_temperature": 0.07, "knn_primary_k": 20, "logreg_c": (0.01, 0.1, 1.0, 10.0),
            # MAE's linear probe (LARS)
            "lin_epochs": 90, "lin_batch_size": 16384, "lin_blr": 0.1, "lin_warmup_epochs": 10,
            # end-to-end (MAE ViT-B fine-tuning recipe; L/H: ft_epochs 50, blr 1e-3, layer_decay 0.75, drop_path 0.2/0.3)
            "blocks": 4, "ft_epochs": 100, "ft_batch_size": 1024, "blr": 5e-4, "layer_decay": 0.65, "drop_path": 0.1,
            "ft_weight_decay": 0.05, "warmup_epochs": 5, "min_lr": 1e-6, "mixup": 0.8, "cutmix": 1.0,
            "label_smoothing": 0.1, "randaug": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "checkpoint_interval": 0},
    # LARS steps are relative to ‖w‖: the mini world keeps MAE's absolute lr (0.1·16384/256 = 6.4) at batch 128
    mini_params={"epochs": 100, "batch_size": 128, "ft_epochs": 10, "ft_batch_size": 32, "warmup_epochs": 1, "blr": 1e-3,
                 "lin_batch_size": 128, "lin_blr": 12.8},
    choices={"protocol": ("linear", "mae-linear", "knn", "logreg", "partial-ft", "ln-ft", "finetune")},
    variant_keys=("protocol",),
    # 3 probe seeds: on 324 mini training images the held-out selection alone moves top-1 by ±3 points
    quickstart=({"protocol": "linear", "seeds": 3},),
    description="ImageNet-1k top-1/top-5: frozen features (DINOv2 linear sweep, k-NN, scikit-learn logistic "
                "regression) or trained end to end (fine-tuning, partial, LayerNorm-only)",
)


def load_split(root: Path, split: str, transform) -> ImageFolder:
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataNotFoundError(f"ImageNet split {split!r} not found at {folder}: expected ImageFolder {split}/<class>/*.JPEG")
    return ImageFolder(str(folder), transform=transform)


def labelled_rows(dataset: ImageFolder, fraction: float, subset_file: str, subset_seed: int) -> torch.Tensor:
    """Indices of the training images whose labels a low-shot run may use (all by default)."""
    if subset_file and fraction != 1.0:
        raise ValueError("give label_fraction or label_subset, not both")
    if subset_file:
        if not Path(subset_file).is_file():
            raise DataNotFoundError(f"label_subset file {subset_file} not found: expected one image name per line")
        names = {line.strip() for line in Path(subset_file).read_text().splitlines() if line.strip()}
        rows = [i for i, (path, _) in enumerate(dataset.samples) if Path(path).name in names]
        found = {Path(dataset.samples[i][0]).name for i in rows}
        if found != names:
            missing = sorted(names - found)
            raise ValueError(f"{len(missing)} images of {subset_file} are not in the train split, e.g. {missing[:3]}")
        return torch.tensor(rows)
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    targets = torch.tensor(dataset.targets)
    if fraction == 1.0:
        return torch.arange(len(targets))
    rows = []
    for c in range(len(dataset.classes)):
        members = torch.nonzero(targets == c).flatten()
        keep = max(1, round(len(members) * fraction))
        rows.append(members[torch.randperm(len(members), generator=seeded(subset_seed, c, 17))[:keep]])
    return torch.cat(rows).sort().values


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single seed)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(values) > 1 else None)


def linear_features(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """B×(N_LAST+1)×D: the mean CLS token of each of the last 4 blocks, then the mean patch token."""
    depth = backbone.meta.depth
    feats = backbone.forward_features(images, layers=range(depth - N_LAST, depth), norm=True)
    cls = [c.mean(dim=1) for c in feats.cls]
    return torch.stack([*cls, feats.patch[-1].mean(dim=(2, 3))], dim=1)


# ---------------------------------------------------------------------------------------
# The multi-head linear sweep
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadConfig:
    n_blocks: int
    avgpool: bool
    lr: float

    def inputs(self, feats: torch.Tensor) -> torch.Tensor:
        parts = [feats[:, N_LAST - self.n_blocks : N_LAST].flatten(1)]
        if self.avgpool:
            parts.append(feats[:, N_LAST])
        return torch.cat(parts, dim=1)


def dinov2_grid() -> list[HeadConfig]:
    return [HeadConfig(n, pool, lr) for n in (1, N_LAST) for pool in (False, True) for lr in LINEAR_LRS]


def train_linear_heads(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, configs: list[HeadConfig], *,
    epochs: int, batch_size: int, seed: int, momentum: float = 0.9, indices: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Train every head in one pass over ``feats[indices]`` (all rows by default; the features may be
    an fp16 memory map: only each batch is read and converted); returns (W Din×C, b C) per config.

    Heads that read the same input share one weight tensor (Din × heads × C): a step is one GEMM for
    the logits and one for the gradient of all of them. The cross-entropy gradient is written out
    (softmax − one-hot) and momentum SGD is applied in place, so that the GEMMs, not autograd's
    bookkeeping, take the time. A head's init and batch order depend only on (seed, its input), so
    it ends where the same head trained alone would.
    """
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault((c.n_blocks, c.avgpool), []).append(i)
    params = {}
    for (n, pool), idx in groups.items():
        din = HeadConfig(n, pool, 0).inputs(feats[:1].float()).shape[1]
        gen = torch.Generator().manual_seed(seed * 1009 + n * 2 + int(pool))
        w0 = torch.randn(din, num_classes, generator=gen) * 0.01
        W = w0[:, None, :].expand(-1, len(idx), -1).contiguous()
        b = torch.zeros(len(idx), num_classes)
        lrs = torch.tensor([configs[i].lr * batch_size / 256 for i in idx])
        params[(n, pool)] = (W, b, lrs, torch.zeros_like(W), torch.zeros_like(b))
    rows = torch.arange(feats.shape[0]) if indices is None else indices
    n_samples = len(rows)
    batch_size = min(batch_size, n_samples)
    steps_per_epoch = math.ceil(n_samples / batch_size)
    total, step = epochs * steps_per_epoch, 0
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = rows[torch.randperm(n_samples, generator=order_gen)]
        for start in range(0, n_samples, batch_size):
            batch = perm[start : start + batch_size]
            x_all, y = feats[batch].float(), labels[batch]
            B = len(batch)
            scale = 0.5 * (1 + math.cos(math.pi * step / total))
            for (n, pool), (W, b, lrs, buf_w, buf_b) in params.items():
                x = HeadConfig(n, pool, 0).inputs(x_all)
                D, H, C = W.shape
                probs = torch.addmm(b.view(1, H * C), x, W.view(D, H * C)).view(B, H, C).softmax(dim=-1)
                probs.scatter_add_(2, y.view(B, 1, 1).expand(B, H, 1), torch.full((B, H, 1), -1.0))  # ∂CE/∂logits
                buf_w.view(D, H * C).addmm_(x.t(), probs.view(B, H * C), beta=momentum, alpha=1 / B)
                buf_b.mul_(momentum).add_(probs.sum(dim=0), alpha=1 / B)
                W.addcmul_(buf_w, (lrs * scale).view(1, H, 1), value=-1)
                b.addcmul_(buf_b, (lrs * scale).view(H, 1), value=-1)
            step += 1
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(configs)
    for key, idx in groups.items():
        W, b = params[key][0], params[key][1]
        for j, i in enumerate(idx):
            out[i] = (W[:, j].contiguous(), b[j].clone())
    return out  # type: ignore[return-value]


def heldout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (fit, held-out) index split of the training set; held-out is never empty."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    n_held = max(1, int(round(n * fraction)))
    return perm[n_held:], perm[:n_held]


# ---------------------------------------------------------------------------------------
# MAE's linear probe
# ---------------------------------------------------------------------------------------
def feature_statistics(feats: torch.Tensor, rows: torch.Tensor, config: HeadConfig, chunk: int = 65536):
    """Mean and biased variance of a head's input over ``rows``, streamed in float64 chunks so that a
    memory-mapped bank is never loaded whole."""
    total = sq = None
    for start in range(0, len(rows), chunk):
        x = config.inputs(feats[rows[start : start + chunk]].float()).double()
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x**2).sum(0) if sq is None else sq + (x**2).sum(0)
    mean = total / len(rows)
    return mean.float(), (sq / len(rows) - mean**2).clamp_min(0).float()


def lars_step(params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor], lr: float,
              momentum: float = 0.9, trust: float = 0.001) -> None:
    """MAE's LARS (``util/lars.py``, weight decay 0): matrices get the update scaled by
    ``trust·‖p‖/‖g‖`` (1 where a norm is 0); biases get plain SGD with momentum."""
    with torch.no_grad():
        for p, g, buf in zip(params, grads, buffers):
            if p.ndim > 1:
                p_norm, g_norm = p.norm(), g.norm()
                g = g * torch.where((p_norm > 0) & (g_norm > 0), trust * p_norm / g_norm, torch.ones(()))
            buf.mul_(momentum).add_(g)
            p.sub_(lr * buf)


def train_mae_linear_head(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, rows: torch.Tensor, *,
                          epochs: int, batch_size: int, blr: float, warmup_epochs: int, seed: int):
    """MAE's linear probe on the last block's (mean) CLS token: BatchNorm1d(affine=False, eps 1e-6)
    then a linear layer (trunc-normal std 0.01), LARS, lr = blr·batch/256, per-iteration linear warm-up
    then half-cosine to 0. On cached features BatchNorm's statistics are those of the training rows
    (what its running estimates converge to); the returned (W, b) fold them in, so they act on raw
    features like the sweep's heads."""
    config = HeadConfig(1, False, blr)
    mean, var = feature_statistics(feats, rows, config)
    inv_std = (var + 1e-6).rsqrt()
    gen = seeded(seed, 23)
    W = torch.nn.init.trunc_normal_(torch.empty(len(mean), num_classes), std=0.01, a=-0.02, b=0.02, generator=gen)
    b = torch.zeros(num_classes)
    W.requires_grad_(True)
    b.requires_grad_(True)
    buffers = [torch.zeros_like(W), torch.zeros_like(b)]
    batch_size = min(batch_size, len(rows))
    steps = math.ceil(len(rows) / batch_size)
    lr = blr * batch_size / 256
    for epoch in range(epochs):
        perm = rows[torch.randperm(len(rows), generator=gen)]
        for i, start in enumerate(range(0, len(rows), batch_size)):
            batch = perm[start : start + batch_size]
            t = epoch + i / steps
            scale = t / warmup_epochs if t < warmup_epochs else 0.5 * (1 + math.cos(math.pi * (t - warmup_epochs) / (epochs - warmup_epochs)))
            x = (config.inputs(feats[batch].float()) - mean) * inv_std
            loss = F.cross_entropy(x @ W + b, labels[batch])
            lars_step([W, b], list(torch.autograd.grad(loss, (W, b))), buffers, lr * scale)
    W, b = W.detach(), b.detach()
    if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
        raise FloatingPointError("the MAE linear probe diverged (non-finite weights)")
    return config, W * inv_std[:, None], b - (mean * inv_std) @ W


def top1_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per val image: is the label the top score (ties broken as `topk_accuracy` breaks them)?"""
    return logits.topk(1, dim=1).indices[:, 0] == labels


def select_and_report(
    configs: list[HeadConfig], heads, sel_x, sel_y, rep_x, rep_y
) -> tuple[int, float, dict[int, float], torch.Tensor]:
    """Pick the head with the best top-1 on the selection split, then evaluate it on the report split:
    (best, its selection top-1, its report top-k, its per-image report top-1 hits). Diverged heads
    (non-finite weights, e.g. the largest learning rates) are never selected."""
    finite = [bool(torch.isfinite(W).all() and torch.isfinite(b).all()) for W, b in heads]
    if not any(finite):
        raise FloatingPointError("every head of the sweep diverged (non-finite weights)")
    sel_acc = [topk_accuracy(c.inputs(sel_x) @ W + b, sel_y, ks=(1,))[1] if ok else -1.0
               for c, (W, b), ok in zip(configs, heads, finite)]
    best = max(range(len(configs)), key=lambda i: (sel_acc[i], -i))
    W, b = heads[best]
    logits = configs[best].inputs(rep_x) @ W + b
    return best, sel_acc[best], topk_accuracy(logits, rep_y, ks=(1, 5)), top1_hits(logits, rep_y)


def per_image_top1(correct: list[torch.Tensor]) -> list[float]:
    """Each val image's top-1 in percent, averaged over probe seeds: their mean is the reported top-1."""
    return (100 * torch.stack(correct).double().mean(dim=0)).tolist()


class ImageNetTask:
    spec = SPEC

    def run(self, backbone: Backbone, spec: TaskSpec, ctx: RunContext) -> TaskOutput:
        p = spec.params
        transform = backbone.meta.preprocess.transform()
        train, val = load_split(ctx.data_root, "train", transform), load_split(ctx.data_root, "val", transform)
        if train.classes != val.classes:
            raise ValueError("train and val have different class folders")
        num_classes = len(train.classes)
        rows = labelled_rows(train, p["label_fraction"], p["label_subset"], p["subset_seed"])
        seeds = [ctx.seed + i for i in range(p["seeds"])]
        if p["protocol"] in ("knn", "logreg") and len(seeds) > 1:
            raise ValueError(f"--protocol {p['protocol']} has no training randomness: seeds must be 1")
        if p["protocol"] == "knn":
            return self._knn(backbone, spec, ctx, train, val, num_classes, rows)
        if p["protocol"] == "logreg":
            return self._logreg(backbone, spec, ctx, train, val, rows)
        if p["protocol"] not in ("linear", "mae-linear"):
            return self._end_to_end(backbone, p, ctx, val, num_classes, rows, seeds)
        if backbone.meta.num_cls_tokens == 0:
            raise ValueError(f"{backbone.meta.name} has no CLS tokens: the DINOv2 linear grid needs them; use --protocol knn")
        manifest = manifest_sha256(ctx.data_root)
        feats, labels = cached_features(backbone, train, ctx, linear_features, "linear-v1", "train", manifest)
        val_feats, val_labels = cached_features(backbone, val, ctx, linear_features, "linear-v1", "val", manifest)
        if p["protocol"] == "mae-linear":
            return self._mae_linear(p, feats, labels, val_feats, val_labels, num_classes, rows, seeds)
        configs = dinov2_grid()
        runs, correct = [], []
        for seed in seeds:
            fit, held = heldout_split(len(rows), p["heldout_fraction"], seed)
            fit, held = rows[fit], rows[held]
            heads = train_linear_heads(feats, labels, num_classes, configs, epochs=p["epochs"],
                                       batch_size=p["batch_size"], seed=seed, indices=fit)
            best, held_top1, acc, hits = select_and_report(configs, heads, feats[held].float(), labels[held],
                                                           val_feats.float(), val_labels)
            correct.append(hits)
            runs.append({"seed": seed, "top1": 100 * acc[1], "top5": 100 * acc[5], "heldout_top1": 100 * held_top1,
                         **asdict(configs[best])})
        selected = {k: runs[0][k] for k in ("n_blocks", "avgpool", "lr")} if len(runs) == 1 else {"per_seed": runs}
        return TaskOutput(self._seed_metrics(runs, {"top1": "val", "top5": "val", "heldout_top1": "train-heldout"}),
                          selected={**selected, "num_heads": len(configs), "labelled_images": len(rows)},
                          per_sample={"top1": per_image_top1(correct)})

    def _mae_linear(self, p, feats, labels, val_feats, val_labels, num_classes, rows, seeds) -> TaskOutput:
        """One fixed recipe, nothing to select: every labelled row trains, val is scored once."""
        runs, correct = [], []
        for seed in seeds:
            config, W, b = train_mae_linear_head(feats, labels, num_classes, rows, epochs=p["lin_epochs"],
                                                 batch_size=p["lin_batch_size"], blr=p["lin_blr"],
                                                 warmup_epochs=p["lin_warmup_epochs"], seed=seed)
            logits = config.inputs(val_feats.float()) @ W + b
            acc = topk_accuracy(logits, val_labels, ks=(1, 5))
            runs.append({"seed": seed, "top1": 100 * acc[1], "top5": 100 * acc[5]})
            correct.append(top1_hits(logits, val_labels))
        selected = {"selection": "none (fixed recipe)", "labelled_images": len(rows),
                    **({"per_seed": runs} if len(runs) > 1 else {})}
        return TaskOutput(self._seed_metrics(runs, {"top1": "val", "top5": "val"}), selected=selected,
                          per_sample={"top1": per_image_top1(correct)})

    @staticmethod
    def _seed_metrics(runs: list[dict], splits: dict[str, str]) -> list[Metric]:
        out = []
        for name, split in splits.items():
            mean, std = mean_std([r[name] for r in runs])
            out.append(Metric(name, mean, split, True, primary=name == "top1", std=std))
        return out

    def _end_to_end(self, backbone, p, ctx, val, num_classes, rows, seeds) -> TaskOutput:
        import copy

        from .imagenet_ft import run_end_to_end

        train = load_split(ctx.data_root, "train", transform=None)  # PIL images: the recipe augments them
        runs = []
        for seed in seeds:
            model = copy.deepcopy(backbone) if len(seeds) > 1 else backbone
            acc, info = run_end_to_end(model, dict(p), ctx, train, rows, val, num_classes, seed)
            runs.append({"seed": seed, "top1": 100 * acc[1], "top5": 100 * acc[5], **info})
        selected = {"selection": "final model (no epoch selection)", "labelled_images": len(rows),
                    **({k: v for k, v in runs[0].items() if k not in ("seed", "top1", "top5")} if len(runs) == 1
                       else {"per_seed": runs})}
        return TaskOutput(self._seed_metrics(runs, {"top1": "val", "top5": "val"}), selected=selected)

    def _knn(self, backbone, spec, ctx, train, val, num_classes, rows) -> TaskOutput:
        reduce = lambda model, images: model.knn_embedding(images)  # noqa: E731
        manifest = manifest_sha256(ctx.data_root)
        feats, labels = cached_features(backbone, train, ctx, reduce, "knn-v1", "train", manifest)
        val_feats, val_labels = cached_features(backbone, val, ctx, reduce, "knn-v1", "val", manifest)
        scores = knn_classify(feats[rows].float(), labels[rows], val_feats.float(), num_classes, KNN_KS,
                              spec.params["knn_temperature"])
        primary_k = spec.params["knn_primary_k"]
        metrics = [
            Metric(f"top1_k{k}" if k != primary_k else "top1", 100 * topk_accuracy(s, val_labels, (1,))[1], "val",
                   True, primary=k == primary_k)
            for k, s in scores.items()
        ]
        return TaskOutput(metrics=metrics, selected={"k": primary_k, "temperature": spec.params["knn_temperature"],
                                                     "labelled_images": len(rows)},
                          per_sample={"top1": per_image_top1([top1_hits(scores[primary_k], val_labels)])})


    def _logreg(self, backbone, spec, ctx, train, val, rows) -> TaskOutput:
        """scikit-learn logistic regression on the last block's mean CLS ⊕ mean patch token: slow, but a
        trusted reference for the sweep. C is chosen on the same held-out slice of train."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        manifest = manifest_sha256(ctx.data_root)
        feats, labels = cached_features(backbone, train, ctx, linear_features, "linear-v1", "train", manifest)
        val_feats, val_labels = cached_features(backbone, val, ctx, linear_features, "linear-v1", "val", manifest)
        x = HeadConfig(1, True, 0).inputs(feats.float()).numpy()
        xv = HeadConfig(1, True, 0).inputs(val_feats.float()).numpy()
        fit, held = heldout_split(len(rows), spec.params["heldout_fraction"], ctx.seed)
        fit, held = rows[fit], rows[held]
        scaler = StandardScaler().fit(x[fit])
        fitted = {c: LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x[fit]), labels[fit].numpy())
                  for c in spec.params["logreg_c"]}
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


TASKS.register("imagenet", ImageNetTask)
