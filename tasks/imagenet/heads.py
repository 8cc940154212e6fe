"""Classification heads on cached frozen features: the DINOv2 linear sweep and MAE's linear probe.

Linear sweep (DINOv2): 52 heads = n_last_blocks {1, 4} × avgpool {no, yes} × 13 learning rates,
all trained together in one pass over the extracted features (SGD momentum 0.9, cosine, lr ×
batch/256). Unlike DINOv2, the head is chosen on a seeded held-out slice of train and val is
evaluated once, for that head only.

MAE's linear probe: BatchNorm without affine + linear on the last block's CLS token, LARS, a fixed
recipe (nothing selected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evalsuite.contracts import Backbone
from evalsuite.sampling import seeded
from tasks.imagenet.metrics import topk_accuracy

LINEAR_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
N_LAST = 4  # CLS of the last 4 blocks are extracted; heads read the last 1 or all 4


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


class HeadSweep:
    """Every head of a grid trained together on batches of (mean CLS / patch) features.

    Heads that read the same input share one weight tensor (Din × heads × C): a step is one GEMM for
    the logits and one for the gradient of all of them. The cross-entropy gradient is written out
    (softmax − one-hot) and momentum SGD is applied in place, so that the GEMMs, not autograd's
    bookkeeping, take the time. A head's init depends only on (seed, its input).
    """

    def __init__(self, sample: torch.Tensor, num_classes: int, configs: list[HeadConfig], batch_size: int, seed: int,
                 momentum: float = 0.9):
        self.configs, self.momentum = configs, momentum
        self.groups: dict[tuple[int, bool], list[int]] = {}
        for i, c in enumerate(configs):
            self.groups.setdefault((c.n_blocks, c.avgpool), []).append(i)
        self.params = {}
        for (n, pool), idx in self.groups.items():
            din = HeadConfig(n, pool, 0).inputs(sample[:1].float()).shape[1]
            gen = torch.Generator().manual_seed(seed * 1009 + n * 2 + int(pool))
            w0 = torch.randn(din, num_classes, generator=gen) * 0.01
            W = w0[:, None, :].expand(-1, len(idx), -1).contiguous()
            b = torch.zeros(len(idx), num_classes)
            lrs = torch.tensor([configs[i].lr * batch_size / 256 for i in idx])
            self.params[(n, pool)] = (W, b, lrs, torch.zeros_like(W), torch.zeros_like(b))

    def step(self, x_all: torch.Tensor, y: torch.Tensor, scale: float) -> None:
        """One SGD step of every head on a batch, at ``scale`` × each head's lr."""
        B, momentum = len(y), self.momentum
        for (n, pool), (W, b, lrs, buf_w, buf_b) in self.params.items():
            x = HeadConfig(n, pool, 0).inputs(x_all)
            D, H, C = W.shape
            probs = torch.addmm(b.view(1, H * C), x, W.view(D, H * C)).view(B, H, C).softmax(dim=-1)
            probs.scatter_add_(2, y.view(B, 1, 1).expand(B, H, 1), torch.full((B, H, 1), -1.0))  # ∂CE/∂logits
            buf_w.view(D, H * C).addmm_(x.t(), probs.view(B, H * C), beta=momentum, alpha=1 / B)
            buf_b.mul_(momentum).add_(probs.sum(dim=0), alpha=1 / B)
            W.addcmul_(buf_w, (lrs * scale).view(1, H, 1), value=-1)
            b.addcmul_(buf_b, (lrs * scale).view(H, 1), value=-1)

    def heads(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(W Din×C, b C) per config, in the grid's order."""
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.configs)
        for key, idx in self.groups.items():
            W, b = self.params[key][0], self.params[key][1]
            for j, i in enumerate(idx):
                out[i] = (W[:, j].contiguous(), b[j].clone())
        return out  # type: ignore[return-value]


def cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / total))


def train_linear_heads(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, configs: list[HeadConfig], *,
    epochs: int, batch_size: int, seed: int, momentum: float = 0.9, indices: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Train every head in one pass over ``feats[indices]`` (all rows by default; the features may be
    an fp16 memory map: only each batch is read and converted); returns (W Din×C, b C) per config.
    SGD with momentum, lr × batch/256, cosine to 0 per iteration; the batch order depends only on the
    seed, so each head ends where the same head trained alone would."""
    rows = torch.arange(feats.shape[0]) if indices is None else indices
    n_samples = len(rows)
    batch_size = min(batch_size, n_samples)
    sweep = HeadSweep(feats, num_classes, configs, batch_size, seed, momentum)
    total, step = epochs * math.ceil(n_samples / batch_size), 0
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = rows[torch.randperm(n_samples, generator=order_gen)]
        for start in range(0, n_samples, batch_size):
            batch = perm[start : start + batch_size]
            sweep.step(feats[batch].float(), labels[batch], cosine(step, total))
            step += 1
    return sweep.heads()


def train_linear_heads_augmented(
    backbone: Backbone, images, rows: torch.Tensor, num_classes: int, configs: list[HeadConfig], *, epochs: int,
    batch_size: int, seed: int, ctx, sample: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """DINOv2's exact linear protocol: every iteration extracts the features of freshly augmented
    images (``images[i]`` is the augmented view of (index, epoch)) with the frozen backbone, so
    nothing is cached. ``sample``: one row of features, for the heads' input sizes."""
    n_samples = len(rows)
    batch_size = min(batch_size, n_samples)
    sweep = HeadSweep(sample, num_classes, configs, batch_size, seed)
    total, step = epochs * math.ceil(n_samples / batch_size), 0
    order_gen = torch.Generator().manual_seed(seed)
    backbone.eval()
    for epoch in range(epochs):
        perm = rows[torch.randperm(n_samples, generator=order_gen)]
        for start in range(0, n_samples, batch_size):
            batch = [images[(int(i), epoch)] for i in perm[start : start + batch_size]]
            x = torch.stack([image for image, _ in batch]).to(ctx.device)
            y = torch.tensor([label for _, label in batch])
            with torch.inference_mode(), ctx.autocast():
                feats = linear_features(backbone, x).float().cpu()
            if not torch.isfinite(feats).all():
                raise FloatingPointError("non-finite features from the backbone")
            sweep.step(feats, y, cosine(step, total))
            step += 1
    return sweep.heads()


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
    then a linear layer (normal std 0.01), LARS, lr = blr·batch/256, per-iteration linear warm-up
    then half-cosine to 0. On cached features BatchNorm's statistics are those of the training rows
    (what its running estimates converge to); the returned (W, b) fold them in, so they act on raw
    features like the sweep's heads."""
    config = HeadConfig(1, False, blr)
    mean, var = feature_statistics(feats, rows, config)
    inv_std = (var + 1e-6).rsqrt()
    gen = seeded(seed, 23)
    # MAE calls timm 0.3.2's trunc_normal_(std=0.01) whose bounds ±2 are absolute: effectively untruncated
    W = torch.nn.init.trunc_normal_(torch.empty(len(mean), num_classes), std=0.01, a=-2.0, b=2.0, generator=gen)
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
            cosine = 0.5 * (1 + math.cos(math.pi * (t - warmup_epochs) / (epochs - warmup_epochs)))
            scale = t / warmup_epochs if t < warmup_epochs else cosine
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
