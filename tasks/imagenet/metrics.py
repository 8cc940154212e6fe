"""ImageNet classification metrics: top-k accuracy and the k-NN vote of DINO/Pixio (docs/protocols.md)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of samples whose target is among the k highest logits (ties broken by topk's order)."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be N×C and targets N, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == targets[:, None]
    return {k: hits[:, : min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Weighted k-NN class scores (DINO protocol), one N_test×C tensor per k.

    Features are L2-normalised; each of the k most cosine-similar training samples votes for
    its class with weight exp(sim / T). Test samples are processed in chunks so memory stays
    bounded by chunk_size × N_train. k larger than the bank is clipped to the bank size.
    """
    bank = F.normalize(train_features.float(), dim=1)
    kmax = min(max(ks), bank.shape[0])
    scores = {k: [] for k in ks}
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        sims, idx = (query @ bank.T).topk(kmax, dim=1)
        weights = (sims / temperature).exp()
        onehot = F.one_hot(train_labels[idx], num_classes).float()  # n×kmax×C
        for k in ks:
            kk = min(k, kmax)
            scores[k].append((onehot[:, :kk] * weights[:, :kk, None]).sum(dim=1))
    return {k: torch.cat(v) for k, v in scores.items()}


# ---------------------------------------------------------------------------------------
# Dense prediction
# ---------------------------------------------------------------------------------------
