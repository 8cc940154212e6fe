"""End-to-end ImageNet protocols: layer-wise lr decay, trainable sets, keyed randomness, label
fractions, multi-seed records, and mmengine fine-tuning with resume."""

import random

import numpy as np
import pytest
import torch

from conftest import mini_ctx, run_cli_record, run_protocol
from evalsuite.checkpoints import create_backbone
from evalsuite.environment import seed_everything
from evalsuite.finetune import keyed_global_rng, layer_id, param_groups, select_trainable
from evalsuite.mini import ensure_mini
from evalsuite.runner import evaluate
from tasks.imagenet.data import labelled_rows, load_split
from tasks.imagenet.finetune import posterize_keeping_zero_bits


def test_layer_ids_follow_mae():
    assert [layer_id(n, 12) for n in ("cls_token", "pos_embed", "patch_embed.proj.weight", "register_tokens")] == [0] * 4
    assert layer_id("blocks.0.attn.qkv.weight", 12) == 1 and layer_id("blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("model.blocks.3.norm1.weight", 12) == 4  # DINOv3 wraps timm's Eva as `model`
    assert layer_id("norm.weight", 12) == 13 and layer_id("fc_norm.bias", 12) == 13


def test_layer_decay_groups_equal_timm_reference():
    """Per-parameter lr scale and weight decay against timm's own `param_groups_layer_decay`."""
    from timm.models.vision_transformer import VisionTransformer
    from timm.optim._param_groups import param_groups_layer_decay

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=5,
                              global_pool="avg", fc_norm=True)
    ours = param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.65, depth=4, backbone_prefix="")
    reference = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=("cls_token", "pos_embed"),
                                         layer_decay=0.65)
    names = dict(model.named_parameters())
    by_id = {id(p): n for n, p in names.items()}
    ours_map = {n: (g["lr_scale"], g["weight_decay"]) for g in ours for n in g["names"]}
    ref_map = {by_id[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in reference for p in g["params"]}
    assert set(ours_map) == set(ref_map) == set(names)
    for n in names:
        assert ours_map[n] == pytest.approx(ref_map[n]), n
    assert ours_map["blocks.0.attn.qkv.weight"] == pytest.approx((0.65**4, 0.05))
    assert ours_map["head.weight"] == (1.0, 0.05) and ours_map["cls_token"] == (0.65**5, 0.0)


def _trainable(backbone):
    return {n for n, p in backbone.named_parameters() if p.requires_grad}


def test_trainable_sets_of_each_protocol():
    backbone = create_backbone("mae-tiny", "random")
    every = {n for n, _ in backbone.named_parameters()}
    assert "pos_embed" not in _trainable(backbone)  # a fixed sin-cos table while pretraining …
    select_trainable(backbone, "all")
    # … that MAE's fine-tuning trains; fc_norm replaces the final norm
    assert _trainable(backbone) == every - {"norm.weight", "norm.bias"}
    select_trainable(backbone, "last_blocks", blocks=2)
    assert _trainable(backbone) == {n for n in every if n.startswith(("blocks.6.", "blocks.7."))}
    select_trainable(backbone, "last_blocks", blocks=0)
    assert _trainable(backbone) == set()
    select_trainable(backbone, "layernorm")
    assert _trainable(backbone) == {n for n in every if ".norm1." in n or ".norm2." in n}
    with pytest.raises(ValueError, match="blocks must be in"):
        select_trainable(backbone, "last_blocks", blocks=9)
    with pytest.raises(ValueError, match="no transformer blocks"):
        select_trainable(create_backbone("pixelbert-r18", "random"), "layernorm")


def test_keyed_global_rng_is_deterministic_and_restores_state():
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    before = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    draws = []
    for _ in range(2):
        with keyed_global_rng(0, 3, 7):
            draws.append((torch.rand(1).item(), random.random(), np.random.rand()))
    assert draws[0] == draws[1]
    assert (torch.rand(1), random.random(), np.random.rand()) == before  # outside draws are untouched


def test_zero_bit_posterize_is_black_not_an_error():
    from PIL import Image

    image = Image.fromarray(np.full((4, 4, 3), 200, np.uint8))
    assert np.asarray(posterize_keeping_zero_bits(image, 0)).max() == 0
    assert np.asarray(posterize_keeping_zero_bits(image, 1)).max() == 128


def test_label_fractions_are_per_class_seeded_and_shared(tmp_path):
    train = load_split(ensure_mini("imagenet-mini"), "train", None)
    targets = torch.tensor(train.targets)
    rows = labelled_rows(train, 0.1, "", 0)
    per_class = torch.bincount(targets[rows], minlength=len(train.classes))
    expected = torch.tensor([max(1, round(int((targets == c).sum()) * 0.1)) for c in range(len(train.classes))])
    assert torch.equal(per_class, expected)
    assert torch.equal(rows, labelled_rows(train, 0.1, "", 0)) and not torch.equal(rows, labelled_rows(train, 0.1, "", 1))
    assert len(labelled_rows(train, 1.0, "", 0)) == len(train)
    listing = tmp_path / "subset.txt"
    names = [train.samples[i][0].rsplit("/", 1)[-1] for i in (3, 40, 41)]
    listing.write_text("\n".join(names) + "\n")
    assert labelled_rows(train, 1.0, str(listing), 0).tolist() == [3, 40, 41]
    listing.write_text("n0_missing.JPEG\n")
    with pytest.raises(ValueError, match="not in the train split"):
        labelled_rows(train, 1.0, str(listing), 0)


def test_missing_subset_file_and_diverged_fine_tune_fail_loudly(tmp_path):
    from evalsuite.data import DataNotFoundError
    from tasks.imagenet.finetune import evaluate

    train = load_split(ensure_mini("imagenet-mini"), "train", None)
    with pytest.raises(DataNotFoundError, match="label_subset file"):
        labelled_rows(train, 1.0, str(tmp_path / "1percent.txt"), 0)

    class Diverged(torch.nn.Module):
        def logits(self, images):
            return torch.full((len(images), 15), float("nan"))

    val = [(torch.zeros(3, 8, 8), 0)] * 4
    with pytest.raises(FloatingPointError, match="diverged"):
        evaluate(Diverged(), val, _ctx(tmp_path), batch_size=2)


@pytest.mark.slow
def test_linear_seeds_record_mean_and_std(tmp_path):
    rec = evaluate("mae-tiny", "imagenet", weights="random", data="mini",
                   params={"protocol": "linear", "seeds": 3, "epochs": 5}, out=tmp_path).record
    top1 = next(m for m in rec.metrics if m["name"] == "top1")
    per_seed = [r["top1"] for r in rec.selected["per_seed"]]
    assert [r["seed"] for r in rec.selected["per_seed"]] == [0, 1, 2]
    assert top1["value"] == pytest.approx(np.mean(per_seed)) and top1["std"] == pytest.approx(np.std(per_seed, ddof=1))


FAST = {"label_fraction": 0.25, "epochs": 1, "batch_size": 16}


@pytest.mark.slow
@pytest.mark.parametrize("protocol, extra", [("finetune", {}), ("partial-ft", {"blocks": 2}), ("ln-ft", {})])
def test_end_to_end_protocols_run_on_mini(tmp_path, protocol, extra):
    rec = evaluate("mae-tiny", "imagenet", weights="random", data="mini", params={"protocol": protocol, **FAST, **extra},
                   out=tmp_path).record
    assert rec.status == "ok" and rec.task["label"] == f"imagenet/{protocol}"
    metrics = {m["name"]: m["value"] for m in rec.metrics}
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    assert len(rec.per_sample["top1"]) == 300 and set(rec.per_sample["top1"]) <= {0.0, 100.0}  # per val image
    head = 192 * 2 + 192 * 15 + 15  # fc_norm + linear head of the 15 mini classes
    trainable = rec.selected["trainable_params"]
    if protocol == "ln-ft":
        assert trainable == head + 8 * 2 * 2 * 192  # norm1/norm2 weight and bias of 8 blocks
    elif protocol == "partial-ft":
        assert trainable == head + 2 * sum(p.numel() for p in create_backbone("mae-tiny", "random").blocks[0].parameters())
    assert rec.selected["labelled_images"] == 90 and rec.selected["iterations"] == 90 // 16


def _ctx(path, **settings):
    return mini_ctx("imagenet-mini", path / "work", **settings)


def _final_state(path):
    (checkpoint,) = sorted((path / "work" / "seed-0").glob("iter_10.pth"))
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_finetune_resume_after_kill_ends_in_the_same_state(tmp_path, monkeypatch):
    """Kill after the epoch-1 checkpoint, resume: same weights, optimizer state and metrics, with
    RandAugment, random erasing, mixup/cutmix and drop-path all drawing random numbers."""
    from mmengine.runner.loops import IterBasedTrainLoop

    params = {"protocol": "finetune", "label_fraction": 0.25, "epochs": 2, "batch_size": 16,
              "drop_path": 0.2}
    seed_everything(0)
    straight = run_protocol("imagenet", create_backbone("mae-tiny", "random"), params, _ctx(tmp_path / "a", checkpoint_interval=5))
    real = IterBasedTrainLoop.run_iter

    def dying(self, data_batch):
        if self._iter == 7:
            raise KeyboardInterrupt
        return real(self, data_batch)

    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", dying)
    seed_everything(0)
    with pytest.raises(KeyboardInterrupt):
        run_protocol("imagenet", create_backbone("mae-tiny", "random"), params, _ctx(tmp_path / "b", checkpoint_interval=5))
    assert (tmp_path / "b" / "work" / "seed-0" / "iter_5.pth").is_file()
    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", real)
    seed_everything(0)
    resumed = run_protocol("imagenet", create_backbone("mae-tiny", "random"), params, _ctx(tmp_path / "b", checkpoint_interval=5))
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert a["meta"]["iter"] == b["meta"]["iter"] == 10
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-6, msg=key)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=0, atol=1e-6)
    assert {m.name: m.value for m in straight.metrics} == {m.name: m.value for m in resumed.metrics}


@pytest.mark.slow
def test_two_process_torchrun_finetune_matches_one_process(tmp_path):
    """DDP under torchrun: with the per-iteration randomness off (mixup, drop-path) both runs take the same
    global batches and average the same gradients, so they score the same; rank 0 alone writes."""
    args = ["run", "-b", "mae-tiny", "-t", "imagenet", "--data", "mini", "--weights", "random", "--protocol", "finetune",
            "--label-fraction", "0.25", "-p", "epochs=1", "-p", "batch_size=16", "-p", "mixup=0.0",
            "-p", "cutmix=0.0", "-p", "drop_path=0.0"]
    records = {n: run_cli_record(args, tmp_path / str(n), n, 29541) for n in (1, 2)}
    metrics = {n: {m["name"]: m["value"] for m in r["metrics"]} for n, r in records.items()}
    assert metrics[1] == pytest.approx(metrics[2], abs=1e-6)
    assert records[1]["selected"]["iterations"] == records[2]["selected"]["iterations"] == 90 // 16


@pytest.mark.slow
def test_a_small_label_fraction_under_torchrun_runs_on_a_batch_the_processes_can_split(tmp_path):
    """--label-fraction 0.1 gives fewer images than the batch: the whole subset, rounded down to what two
    processes and mixup's pairs can split (it failed on an odd per-process batch of 15 before), and the
    record says which batch ran."""
    args = ["run", "-b", "mae-tiny", "-t", "imagenet", "--data", "mini", "--weights", "random", "--protocol", "finetune",
            "--label-fraction", "0.1", "-p", "epochs=2"]
    record = run_cli_record(args, tmp_path / "two", 2, 29553)
    assert record["status"] == "ok" and record["settings"]["world_size"] == 2
    batch = record["selected"]["batch_size"]
    assert batch % 4 == 0 and record["selected"]["iterations"] >= 2
