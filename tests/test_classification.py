import itertools
import math

import pytest
import torch

from tasks.imagenet.heads import HeadConfig, dinov2_grid, heldout_split, select_and_report, train_linear_heads
from tasks.imagenet.metrics import knn_classify, topk_accuracy


def test_topk_hand_counts():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    targets = torch.tensor([2, 0, 0, 1])
    # top-1 hits: row1 only → 1/4 ; top-2: row0 (2 in {1,2}), row1, row3 (1 in {2, 0|1})
    acc = topk_accuracy(logits, targets, ks=(1, 2, 3))
    assert acc[1] == 0.25 and acc[3] == 1.0
    assert acc[2] == pytest.approx(0.5 if logits[3].topk(2).indices.tolist() == [2, 0] else 0.75)
    assert topk_accuracy(logits, targets, ks=(1, 5))[5] == 1.0  # k beyond C clips to C


def _brute_force_knn(train, labels, test, num_classes, k, T):
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    out = torch.zeros(len(test), num_classes)
    for i, q in enumerate(test):
        sims = train @ q
        order = sorted(range(len(train)), key=lambda j: -sims[j].item())[: min(k, len(train))]
        for j in order:
            out[i, labels[j]] += torch.exp(sims[j] / T)
    return out


@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_knn_equals_brute_force(k):
    gen = torch.Generator().manual_seed(k)
    train, test = torch.randn(40, 8, generator=gen), torch.randn(17, 8, generator=gen)
    labels = torch.randint(0, 5, (40,), generator=gen)
    scores = knn_classify(train, labels, test, 5, ks=(k,), temperature=0.07, chunk_size=4)[k]
    assert torch.allclose(scores, _brute_force_knn(train, labels, test, 5, k, 0.07), rtol=1e-5)


def test_knn_ties_and_k_larger_than_a_class():
    # two identical training vectors with different labels tie exactly; class 1 has 1 sample, k=3
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    scores = knn_classify(train, labels, torch.tensor([[1.0, 0.1]]), 2, ks=(2, 3, 100), temperature=0.07)
    assert scores[2][0, 0] == pytest.approx(scores[2][0, 1].item())  # the tie votes both ways
    assert torch.allclose(scores[100], scores[3])  # k beyond the bank uses the whole bank
    assert scores[3][0, 1] > scores[2][0, 1]


def _toy(n=120, d=6, c=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=gen)
    centers = torch.randn(c, 5, d, generator=gen)
    feats = centers[labels] + 0.8 * torch.randn(n, 5, d, generator=gen)
    return feats, labels


def test_every_head_of_the_sweep_equals_the_head_trained_alone():
    feats, labels = _toy()
    configs = dinov2_grid()
    together = train_linear_heads(feats, labels, 3, configs, epochs=3, batch_size=32, seed=5)
    for i in (0, 7, 20, 33, 51):
        alone = train_linear_heads(feats, labels, 3, [configs[i]], epochs=3, batch_size=32, seed=5)[0]
        assert torch.allclose(together[i][0], alone[0], atol=1e-5)
        assert torch.allclose(together[i][1], alone[1], atol=1e-5)


def test_sweep_learns_a_separable_problem():
    feats, labels = _toy(n=300)
    heads = train_linear_heads(feats, labels, 3, [HeadConfig(4, True, 0.1)], epochs=20, batch_size=64, seed=0)
    W, b = heads[0]
    assert topk_accuracy(HeadConfig(4, True, 0.1).inputs(feats) @ W + b, labels, ks=(1,))[1] > 0.9


def test_selection_never_reads_the_report_split():
    """Head 1 is perfect on the report split, head 0 on the selection split: head 0 must win."""
    configs = [HeadConfig(1, False, 0.1), HeadConfig(1, False, 0.2)]
    x = torch.zeros(4, 5, 2)
    x[:, 3, 0] = 1.0
    identity, swap = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    heads = [(identity, torch.zeros(2)), (swap, torch.zeros(2))]
    sel_y, rep_y = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    best, sel_acc, rep, hits = select_and_report(configs, heads, x, sel_y, x, rep_y)
    assert best == 0 and sel_acc == 1.0 and rep[1] == 0.0 and not hits.any()


def test_heldout_split_is_seeded_and_disjoint():
    fit, held = heldout_split(100, 0.1, seed=3)
    assert len(held) == 10 and len(fit) == 90 and not set(fit.tolist()) & set(held.tolist())
    assert torch.equal(held, heldout_split(100, 0.1, seed=3)[1])
    assert not torch.equal(held, heldout_split(100, 0.1, seed=4)[1])


def test_grid_is_the_dinov2_grid():
    grid = dinov2_grid()
    assert len(grid) == 52
    assert {(c.n_blocks, c.avgpool) for c in grid} == set(itertools.product((1, 4), (False, True)))
    assert sorted({c.lr for c in grid}) == [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]


@pytest.mark.slow
def test_logreg_protocol_is_a_consistent_reference(tmp_path):
    """The trusted slow reference, the sweep and MAE's probe agree on a random tiny backbone's mini features."""
    from evalsuite.runner import evaluate

    out = {}
    for protocol in ("logreg", "linear", "mae-linear"):
        rec = evaluate("mae-tiny", "imagenet", weights="random", data="mini", params={"protocol": protocol},
                       out=tmp_path).record
        out[protocol] = {m["name"]: m["value"] for m in rec.metrics}
        assert rec.task["label"] == f"imagenet/{protocol}"
        scores = rec.per_sample["top1"]  # per-image top-1: one score per val image, mean = top-1
        assert len(scores) == 300 and set(scores) <= {0.0, 100.0}
        assert sum(scores) / len(scores) == pytest.approx(out[protocol]["top1"], abs=1e-5)  # top-1 is a float32 mean
    assert 0 <= out["logreg"]["top1"] <= 100 and out["logreg"]["top5"] >= out["logreg"]["top1"]
    assert abs(out["logreg"]["top1"] - out["linear"]["top1"]) < 20  # same features, two trainers
    assert abs(out["mae-linear"]["top1"] - out["linear"]["top1"]) < 20 and out["mae-linear"]["top1"] > 100 / 15


def test_lars_step_hand_computed():
    from tasks.imagenet.heads import lars_step

    W, b = torch.tensor([[3.0, 4.0]]), torch.tensor([1.0])
    gW, gb = torch.tensor([[0.6, 0.8]]), torch.tensor([2.0])
    buffers = [torch.zeros_like(W), torch.zeros_like(b)]
    lars_step([W, b], [gW, gb], buffers, lr=10.0)
    # matrix: trust·‖W‖/‖g‖ = 0.001·5/1 scales the gradient; the bias gets plain SGD
    assert torch.allclose(W, torch.tensor([[3.0 - 10 * 0.005 * 0.6, 4.0 - 10 * 0.005 * 0.8]]))
    assert torch.allclose(b, torch.tensor([1.0 - 10 * 2.0]))
    lars_step([W, b], [torch.zeros_like(W), torch.zeros_like(b)], buffers, lr=10.0)  # zero gradient: momentum only
    assert torch.allclose(b, torch.tensor([1.0 - 10 * 2.0 * 1.9]))


def test_mae_linear_folds_batchnorm_into_the_head():
    """The returned head on raw features equals BatchNorm(affine=False, train statistics) then the linear layer."""
    from tasks.imagenet.heads import HeadConfig, feature_statistics, train_mae_linear_head

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=gen)
    feats = torch.randn(60, 5, 4, generator=gen) * 7 + 3
    feats[:, 3, 0] += 40 * labels  # the last block's CLS separates the classes
    rows = torch.arange(50)
    config, W, b = train_mae_linear_head(feats, labels, 3, rows, epochs=100, batch_size=16, blr=100.0, warmup_epochs=3, seed=0)
    mean, var = feature_statistics(feats, rows, config, chunk=7)
    x = config.inputs(feats[rows])
    assert torch.allclose(mean, x.mean(0), atol=1e-4) and torch.allclose(var, x.var(0, unbiased=False), atol=1e-3)
    bn = torch.nn.BatchNorm1d(4, affine=False, eps=1e-6).eval()
    bn.running_mean, bn.running_var = mean, var
    W_raw = W / (var + 1e-6).rsqrt()[:, None]
    b_raw = b + (mean * (var + 1e-6).rsqrt()) @ W_raw
    assert torch.allclose(bn(x) @ W_raw + b_raw, x @ W + b, atol=1e-4)
    assert config == HeadConfig(1, False, 100.0)
    assert topk_accuracy(config.inputs(feats[50:]) @ W + b, labels[50:], ks=(1,))[1] >= 0.9


def test_sweep_steps_equal_autograd_sgd_with_momentum():
    """The hand-written CE gradient and in-place momentum update against torch.optim.SGD on autograd."""
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (40,), generator=gen)
    feats = torch.randn(40, 5, 6, generator=gen)
    config = HeadConfig(4, True, 0.5)
    (W0, b0), = train_linear_heads(feats, labels, 4, [config], epochs=0, batch_size=20, seed=1)
    (W, b), = train_linear_heads(feats, labels, 4, [config], epochs=2, batch_size=20, seed=1)
    Wr, br = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.SGD([Wr, br], lr=0.5 * 20 / 256, momentum=0.9)
    order = torch.Generator().manual_seed(1)
    step = 0
    for _ in range(2):
        perm = torch.randperm(40, generator=order)
        for start in (0, 20):
            batch = perm[start : start + 20]
            for group in opt.param_groups:
                group["lr"] = 0.5 * 20 / 256 * 0.5 * (1 + math.cos(math.pi * step / 4))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(config.inputs(feats[batch]) @ Wr + br, labels[batch]).backward()
            opt.step()
            step += 1
    assert torch.allclose(W, Wr.detach(), atol=1e-6) and torch.allclose(b, br.detach(), atol=1e-6)


def test_diverged_heads_are_never_selected():
    configs = [HeadConfig(1, False, 0.1), HeadConfig(1, False, 0.01)]
    x = torch.randn(10, 5, 3)
    y = torch.zeros(10, dtype=torch.long)
    nan_head = (torch.full((3, 2), float("nan")), torch.zeros(2))
    good_head = (torch.zeros(3, 2), torch.tensor([1.0, 0.0]))  # always class 0: 100 % here
    best, _, acc, _ = select_and_report(configs, [nan_head, good_head], x, y, x, y)
    assert best == 1 and acc[1] == 1.0
    with pytest.raises(FloatingPointError, match="diverged"):
        select_and_report(configs, [nan_head, nan_head], x, y, x, y)
