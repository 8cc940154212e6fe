"""Pretraining objectives: masks, targets, parity with transformers, DDP equivalence, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones.mae import norm_pix_target, patchify, pretrain_from_transformers, random_masking, unpatchify
from backbones.pixio import block_masking
from evalsuite.checkpoints import create_backbone
from evalsuite.pretrain import PretrainConfig, pretrain
from evalsuite.registry import BACKBONES


def test_block_mask_invariants():
    noise = torch.rand(3, 16)
    ids_keep, mask, ids_restore = block_masking(noise, (16, 16), 0.75, 4)
    assert ids_keep.shape == (3, 64) and mask.sum(1).tolist() == [192.0] * 3  # int(16·0.25) = 4 blocks kept
    blocks = mask.reshape(3, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(3, 16, 16)  # per block, its 16 patches
    assert torch.all((blocks.sum(-1) == 0) | (blocks.sum(-1) == 16))  # every block all-or-nothing
    ids_shuffle = ids_restore.argsort(1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(256).expand(3, -1))
    kept = torch.zeros(3, 256).scatter_(1, ids_keep, 1.0)
    assert torch.equal(kept, 1 - mask)  # the kept ids are exactly the unmasked patches
    assert set(noise[0].argsort()[:4].tolist()) == {int(i) // 64 * 4 + (int(i) % 16) // 4 for i in ids_keep[0]}


def test_mae_random_mask_count():
    ids_keep, mask, ids_restore = random_masking(torch.rand(2, 196), 0.75)
    assert ids_keep.shape == (2, 49) and mask.sum(1).tolist() == [147.0, 147.0]


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 32, 48)
    patches = patchify(x, 8)
    assert patches.shape == (2, 24, 192)
    assert torch.equal(unpatchify(patches, 8, (4, 6)), x)
    assert torch.equal(patches[0, 7].reshape(8, 8, 3)[..., 1], x[0, 1, 8:16, 8:16])  # patch (1, 1), green


def test_norm_pix_target_uses_unbiased_variance():
    patch = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    expected = (patch - 2.5) / (5 / 3 + 1e-6) ** 0.5  # unbiased var of 1..4 = 5/3 (biased would be 1.25)
    assert torch.allclose(norm_pix_target(patch), expected)


def test_mae_objective_equals_transformers_pretraining():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTMAEConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                    decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                                    decoder_intermediate_size=128, image_size=32, patch_size=8, mask_ratio=0.75,
                                    norm_pix_loss=True, layer_norm_eps=1e-6)
    ref = transformers.ViTMAEForPreTraining(cfg).eval()
    from backbones.mae import MaskedAutoencoder, make_spec
    from evalsuite.checkpoints import build_backbone

    encoder = build_backbone(make_spec("mae-pt-test", 64, 2, 4, 8, None, None, img_size=32), "random")
    ours = MaskedAutoencoder(encoder, decoder_dim=32, decoder_depth=2, decoder_heads=4).eval()
    ours.load_state_dict(pretrain_from_transformers(ref.state_dict()), strict=True)
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        theirs = ref(x, noise=noise)
        mine = ours(x, noise)
    assert torch.allclose(mine["mask"], theirs.mask)
    assert (mine["pred"] - theirs.logits).abs().max() <= 1e-4
    assert mine["loss"].item() == pytest.approx(theirs.loss.item(), abs=1e-5)


def test_pixio_encoder_inside_pretraining_equals_inference_encoder():
    encoder = create_backbone("pixio-tiny", "random")
    objective = BACKBONES.get("pixio-tiny").pretrain(encoder, mask_ratio=0.0)
    x = torch.randn(2, 3, 64, 64)  # 8×8 grid = 4 blocks of 4×4 patches
    ids_keep, mask, ids_restore = objective.masks(torch.rand(2, 4), (8, 8))
    assert mask.sum() == 0 and ids_keep.shape == (2, 64)
    with torch.no_grad():
        shuffled = encoder.forward_visible(x, ids_keep)
        feats = encoder.forward_features(x, norm=True)
    patches = torch.gather(shuffled[:, 8:], 1, ids_restore[..., None].expand(-1, -1, 192))
    assert (patches.transpose(1, 2).reshape(2, 192, 8, 8) - feats.patch[0]).abs().max() <= 1e-5
    assert (shuffled[:, :8] - feats.cls[0]).abs().max() <= 1e-5


def _log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("backbone, steps", [("pixio-tiny", 10), ("mae-tiny", 10), ("pixelbert-r18", 12)])
def test_loss_decreases_on_mini_data(tmp_path, backbone, steps):
    pretrain(PretrainConfig(backbone=backbone, steps=steps, batch_size=16, blr=5e-3, out=str(tmp_path), image_size=64))
    losses = [entry["loss"] for entry in _log(tmp_path)]
    assert len(losses) == steps and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


@pytest.mark.slow
def test_dino_student_distils_a_fixed_teacher(tmp_path):
    """With the teacher and center frozen the targets are fixed, so KL(teacher ‖ student) = CE − H(teacher)
    must fall. (Early DINO cross-entropy drifts up with the teacher's entropy under centering.)"""
    pretrain(PretrainConfig(backbone="dino-tiny", steps=10, batch_size=16, blr=1e-3, out=str(tmp_path / "fixed"),
                            image_size=64, objective={"teacher_temp_warmup": 0.0, "teacher_momentum": 1.0,
                                                      "center_momentum": 1.0}))
    kl = [entry["dino"] - entry["teacher_entropy"] for entry in _log(tmp_path / "fixed")]
    assert all(k >= -1e-4 for k in kl) and sum(kl[-3:]) < 0.7 * sum(kl[:3]), kl
    pretrain(PretrainConfig(backbone="dino-tiny", steps=2, batch_size=8, out=str(tmp_path / "full"), image_size=64,
                            objective={"ibot": True, "koleo_weight": 0.1}))
    log = _log(tmp_path / "full")
    assert {"dino", "ibot", "koleo", "teacher_entropy"} <= set(log[0])
    assert all(abs(entry["loss"]) < 1e3 for entry in log)


def _final_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_after_kill_continues_at_the_right_step(tmp_path, monkeypatch):
    common = dict(backbone="mae-tiny", steps=6, batch_size=8, blr=5e-3, save_every=3, image_size=64)
    pretrain(PretrainConfig(**common, out=str(tmp_path / "straight")))
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # killed during step 4, after the step-3 checkpoint
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain(PretrainConfig(**common, out=str(tmp_path / "killed")))
    assert torch.load(tmp_path / "killed" / "checkpoint.pth", weights_only=True)["step"] == 3
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    pretrain(PretrainConfig(**common, out=str(tmp_path / "killed")))
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]
    a, b = _final_state(tmp_path / "straight" / "checkpoint.pth"), _final_state(tmp_path / "killed" / "checkpoint.pth")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["pretrain", "-b", "mae-tiny", "--steps", "3", "--batch-size", "8", "--blr", "5e-3", "--image-size", "64"]
    one = subprocess.run([sys.executable, "-m", "evalsuite", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                          "-m", "evalsuite", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    loss = lambda d: [json.loads(line)["loss"] for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
    assert loss("one") == pytest.approx(loss("two"), rel=1e-4, abs=1e-5)
    a, b = _final_state(tmp_path / "one" / "checkpoint.pth"), _final_state(tmp_path / "two" / "checkpoint.pth")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4


# ---------------------------------------------------------------------------------------
# DINO
# ---------------------------------------------------------------------------------------
from backbones.dinov2 import dino_loss, ema_momentum, ema_update, koleo_loss  # noqa: E402


def test_dino_loss_by_hand():
    s = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[0.5, 0.5, 1.0]])]
    t = [torch.tensor([[0.2, 0.1, 0.0]]), torch.tensor([[0.0, 0.3, 0.1]])]
    center = torch.tensor([[0.1, 0.0, -0.1]])
    ts, tt = 0.1, 0.04
    expected, pairs = 0.0, 0
    for i in range(2):
        p = torch.exp((t[i][0] - center[0]) / tt)
        p = p / p.sum()
        for j in range(3):
            if i != j:
                logq = s[j][0] / ts - torch.logsumexp(s[j][0] / ts, 0)
                expected += -(p * logq).sum().item()
                pairs += 1
    assert pairs == 4
    assert dino_loss(s, t, center, ts, tt).item() == pytest.approx(expected / pairs, rel=1e-6)


def test_dino_centering_and_ema_math():
    encoder = create_backbone("dino-tiny", "random")
    objective = BACKBONES.get("dino-tiny").pretrain(encoder, out_dim=4, hidden=8, bottleneck=4, n_local=0)
    objective.center.fill_(1.0)
    logits = torch.tensor([[0.0, 2.0, 4.0, 6.0], [2.0, 2.0, 2.0, 2.0]])
    objective.update_center(logits, objective.center)
    assert torch.allclose(objective.center, 0.9 * 1.0 + 0.1 * torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert ema_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert ema_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert ema_momentum(100, 100, 0.996) == pytest.approx(1.0)
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = teacher.weight.detach().clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * before + 0.1 * student.weight)
    # the teacher starts as an exact copy and is never trained directly
    assert all(not p.requires_grad for p in objective.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(objective.encoder.parameters(), objective.student.parameters()))
    objective.progress = 0.15  # half-way through the 30 % warm-up: 0.04 → 0.07
    assert objective.teacher_temperature() == pytest.approx(0.055)


def test_koleo_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    n = torch.nn.functional.normalize(x, dim=1)
    d = torch.cdist(n, n) + torch.eye(3) * 10
    assert koleo_loss(x).item() == pytest.approx(-torch.log(d.min(1).values + 1e-8).mean().item(), rel=1e-6)


# ---------------------------------------------------------------------------------------
# Pixel-BERT
# ---------------------------------------------------------------------------------------
from backbones.pixelbert import SPECIAL_TOKENS, mlm_mask, pixel_indices  # noqa: E402


def test_pixelbert_samples_exactly_100_distinct_pixels():
    noise = torch.rand(3, 144)
    picked = pixel_indices(noise, 144, 100)
    assert picked.shape == (3, 100)
    for b in range(3):
        assert len(set(picked[b].tolist())) == 100 and set(picked[b].tolist()) == set(noise[b].argsort()[:100].tolist())
    with pytest.raises(ValueError):
        pixel_indices(torch.rand(1, 25), 25, 100)


def test_mlm_masks_15_percent_with_80_10_10():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIAL_TOKENS), 1000, (64, 200), generator=gen)
    ids[:, 0] = 2  # [CLS] is never a candidate
    candidates = ids >= len(SPECIAL_TOKENS)
    inputs, labels = mlm_mask(ids, candidates, torch.rand(64, 200, 3, generator=gen), 1000, 4)
    chosen = labels != -100
    assert chosen.float().mean().item() == pytest.approx(0.15 * candidates.float().mean().item(), abs=0.01)
    assert not chosen[:, 0].any() and torch.equal(labels[chosen], ids[chosen])
    share_mask = (inputs[chosen] == 4).float().mean().item()
    share_same = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert share_mask == pytest.approx(0.8, abs=0.03) and share_same == pytest.approx(0.1, abs=0.03)
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_quickstart_pretrains_once_then_evaluates_every_mini_task_next_to_random_twins(monkeypatch, tmp_path):
    from evalsuite import quickstart
    from evalsuite.registry import TASKS

    trained = []

    def fake_pretrain(cfg, progress=None):
        trained.append(cfg)
        Path(cfg.out).mkdir(parents=True)
        (Path(cfg.out) / "checkpoint.pth").write_bytes(b"")

    calls = []
    monkeypatch.setattr(quickstart, "pretrain", fake_pretrain)
    for _ in range(2):  # the second run finds the cached checkpoints
        calls = [(b, t, w, label) for b, t, w, label in
                 quickstart.run(tmp_path, run_one=lambda spec, settings, progress: (spec.backbone, spec.task, spec.weights,
                                                                                   spec.weights_label))]
    assert [c.backbone for c in trained] == ["pixio-tiny"]
    assert all(c.image_size == 64 and c.steps == 400 for c in trained)
    mini_tasks = [t for t in TASKS.names() if TASKS.get(t).mini_dataset]
    assert {t for _, t, _, _ in calls} == set(mini_tasks)
    per_task = [(b, w == "random", label) for b, t, w, label in calls if t == "imagenet"]
    assert sorted(per_task) == sorted([("pixio-tiny", True, None), ("pixio-tiny", False, "mini-pretrained")])


def test_quickstart_leaves_out_a_task_whose_extra_is_missing_and_says_so(monkeypatch, tmp_path):
    from evalsuite import quickstart
    from evalsuite.registry import TASKS

    monkeypatch.setattr(quickstart, "pretrain", lambda cfg, progress=None: None)
    monkeypatch.setattr(TASKS.get("metaworld"), "missing_extra", lambda: "needs the robot extra")
    said = []
    tasks = {t for t, *_ in quickstart.run(tmp_path, run_one=lambda spec, settings, progress: (spec.task,),
                                           skipped=lambda task, reason: said.append((task, reason)))}
    assert "metaworld" not in tasks and "imagenet" in tasks and said == [("metaworld", "needs the robot extra")]


def test_quickstart_claims_only_what_the_interval_shows():
    import numpy as np
    import pandas as pd

    from evalsuite import quickstart

    def rows(backbone, value):
        return [{"data": "mini", "world": "seed0-small", "task": task, "task_version": 1, "backbone": backbone,
                 "weights": "w", "seed": 0, "metric": "m", "split": "val", "value": value, "std": float("nan"),
                 "higher_is_better": True, "primary": True, "shown": True, "tolerance": 0.0, "run_id": backbone + task,
                 "finished_at": "2026-01-01"} for task in ("up", "flat", "blind")]

    frame = pd.DataFrame(rows("pixio-tiny", 50.0) + rows("pixio-tiny@mini-pretrained", 60.0))
    rng = np.random.default_rng(0)
    base = rng.normal(50, 5, 200)
    samples = {("mini", "seed0-small", "up", "pixio-tiny", "m"): ("d", base),
               ("mini", "seed0-small", "up", "pixio-tiny@mini-pretrained", "m"): ("d", base + 10 + rng.normal(0, 1, 200)),
               ("mini", "seed0-small", "flat", "pixio-tiny", "m"): ("d", base),
               ("mini", "seed0-small", "flat", "pixio-tiny@mini-pretrained", "m"): ("d", base + rng.normal(0, 30, 200))}
    verdicts = quickstart.twin_deltas(frame, samples).set_index("task")["verdict"]
    assert verdicts.to_dict() == {"up": "pretrained better", "flat": "no clear difference", "blind": "no interval"}


def test_quickstart_replays_on_another_mini_world_pretraining_data_included(monkeypatch, tmp_path):
    from dataclasses import replace

    from evalsuite import quickstart

    monkeypatch.setenv("EVALSUITE_MINI_CACHE", str(tmp_path / "mini"))
    trained = []
    monkeypatch.setattr(quickstart, "pretrain", lambda cfg, progress=None: trained.append(cfg))
    seeds = {spec.data.mini_seed for spec in quickstart.run(tmp_path, run_one=lambda spec, *_: spec, mini_seed=3)}
    assert seeds == {3} and {c.mini_seed for c in trained} == {3}
    assert quickstart.pretrained_checkpoint(quickstart.PRETRAIN["pixio-tiny"]) != \
        quickstart.pretrained_checkpoint(replace(quickstart.PRETRAIN["pixio-tiny"], mini_seed=3))


def test_quickstart_checkpoint_cache_key_follows_the_objective_defaults(monkeypatch, tmp_path):
    """A changed tiny decoder (a registry default, not a PretrainConfig field) must not reuse an old checkpoint."""
    from functools import partial
    from types import SimpleNamespace

    from evalsuite import quickstart

    monkeypatch.setenv("EVALSUITE_MINI_CACHE", str(tmp_path / "mini"))
    monkeypatch.setattr(quickstart, "pretrain", lambda cfg, progress=None: None)
    cfg = quickstart.PRETRAIN["pixio-tiny"]
    paths = []
    for depth in (2, 4, 4):
        spec = SimpleNamespace(pretrain=partial(lambda encoder, **kw: None, decoder_depth=depth))
        monkeypatch.setattr(quickstart, "BACKBONES", SimpleNamespace(get=lambda name, spec=spec: spec))
        paths.append(quickstart.pretrained_checkpoint(cfg))
    assert paths[0] != paths[1] and paths[1] == paths[2]
