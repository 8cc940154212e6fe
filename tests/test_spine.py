"""The spine's contracts, checked over every registered entry (timm's test_models idea), plus
parameters, cell identity, data identity and `evalsuite show`."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from evalsuite.cell import CellSpec
from evalsuite.checkpoints import BackboneSpec
from evalsuite.cli import app
from evalsuite.contracts import Features
from evalsuite.params import ParamError, parse_assignments
from evalsuite.registry import BACKBONES, HEADS, TASKS, TEXT_ENCODERS
from evalsuite.runner import evaluate, resolve_cell


# ---------------------------------------------------------------------------------------
# Registry-wide contracts
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_honours_the_features_contract(name):
    """On the meta device (no memory, even for 5B): one B×D×h×w patch map and one B×n×D CLS tensor
    per requested block, at a non-square multiple of the patch, normed or not."""
    spec = BACKBONES.get(name)
    assert isinstance(spec, BackboneSpec) and spec.name == name
    with torch.device("meta"):
        model = spec.build().eval()
        meta = model.meta
        p, layers = meta.patch_size, list(meta.default_layers)
        assert meta.name == name and meta.num_params == spec.num_params() > 0
        assert len(layers) == 4 and all(0 <= i < meta.depth for i in layers)
        for norm in (True, False):
            feats = model.forward_features(torch.zeros(2, 3, 2 * p, 3 * p), layers=layers, norm=norm)
            assert isinstance(feats, Features) and feats.layers == tuple(layers)
            assert len(feats.patch) == len(feats.cls) == 4
            for patch, cls in zip(feats.patch, feats.cls):
                assert patch.shape[0] == cls.shape[0] == 2 and cls.shape[1] == meta.num_cls_tokens
                assert cls.shape[2] == patch.shape[1]
            if meta.num_cls_tokens:  # ViTs: the token grid, width D, at every block
                assert [tuple(t.shape) for t in feats.patch] == [(2, meta.embed_dim, 2, 3)] * 4
        assert model.forward_features(torch.zeros(1, 3, p, p)).layers == (meta.depth - 1,)  # None = the last block
        with pytest.raises(ValueError, match="outside"):
            model.forward_features(torch.zeros(1, 3, p, p), layers=[meta.depth])


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_and_protocol_resolves_and_is_described(name):
    task = TASKS.get(name)
    assert task.name == name and task.version >= 1 and task.protocols and task.description
    labels = set()
    for proto in task.protocols.values():
        assert proto.description and proto.primary_metric and proto.report_split and proto.selection_split
        assert proto.report_split != proto.selection_split  # never select on the reported split
        for mini in (False, True):
            cfg = task.resolve(protocol=proto.name, mini=mini)
            assert cfg.protocol is proto and cfg.label.startswith(f"{name}/{proto.name}")
            values, identity = cfg.values(), cfg.identity()
            assert set(identity) - {"protocol"} == set(values) and cfg.variant() == {}  # the defaults are no variant
            json.dumps(values)  # records hold plain values
        labels.add(task.resolve(protocol=proto.name).label)
        own = set(proto.params.field_names())
        for key, registry in proto.components.items():
            assert key in own
            for entry in registry.names():
                clash = own & set(registry.get(entry).params.field_names())
                assert not clash, f"{name}/{proto.name}: {key} {entry} parameters {clash} collide with the protocol's"
        for key in proto.mini:  # every mini-world override names a parameter of the protocol or a component
            known = own.union(*(set(r.get(e).params.field_names()) for r in proto.components.values() for e in r.names()))
            assert key in known, f"{name}/{proto.name}: mini override {key!r} is no parameter"
    assert len(labels) == len(task.protocols)
    for variant in task.quickstart:
        task.resolve(variant, mini=True)


def test_heads_and_text_encoders_are_registered_with_their_parameters():
    assert {"linear", "dpt", "bins", "upernet"} <= set(HEADS.names())
    for name in HEADS.names():
        head = HEADS.get(name)
        params = head.params.build()
        assert {"layers", "norm", "cls"} <= set(params.to_dict()), f"{name} must declare what it reads"
    assert {"scratch", "bert-local"} <= set(TEXT_ENCODERS.names())


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------
def test_parameters_are_typed_ranged_and_explained():
    imagenet, nyuv2 = TASKS.get("imagenet"), TASKS.get("nyuv2")
    cfg = imagenet.resolve({"protocol": "knn", "ks": "5,10", "primary_k": "10", "temperature": "0.1"})
    assert cfg.params.ks == (5, 10) and cfg.params.primary_k == 10 and cfg.params.temperature == 0.1
    cases = [
        (imagenet, {"protocol": "linear", "epochs": "-3"}, "epochs=-3 is out of range"),
        (imagenet, {"protocol": "linear", "epochs": "0"}, "epochs=0 is out of range"),
        (imagenet, {"protocol": "linear", "seeds": "0"}, "seeds=0 is out of range"),
        (imagenet, {"protocol": "linear", "batch_size": "0"}, "batch_size=0 is out of range"),
        (imagenet, {"protocol": "knn", "primary_k": "7"}, "primary_k=7 must be one of ks=10,20,100,200"),
        (imagenet, {"protocol": "knn", "seeds": "3"}, "has no parameter 'seeds'"),
        (imagenet, {"protocol": "linear", "epoch": "3"}, "Did you mean 'epochs'"),
        (imagenet, {"protocol": "finetune", "mixup": "abc"}, "mixup='abc' is not a number"),
        (imagenet, {"protocol": "lnft"}, "Did you mean 'ln-ft'"),
        (nyuv2, {"crop": "abc"}, "crop='abc'"),
        (nyuv2, {"crop": "256"}, "crop='256' needs 2 comma-separated values"),
        (nyuv2, {"head": "linear", "features": "64"}, "features applies to head dpt only"),
        (nyuv2, {"head": "upernet"}, "head='upernet' is not one of linear|dpt|bins"),
    ]
    for task, overrides, message in cases:
        with pytest.raises(ParamError, match=message.replace("(", r"\(").replace("|", r"\|")):
            task.resolve(overrides)
    assert parse_assignments(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ParamError, match="KEY=VALUE"):
        parse_assignments(["epochs"])


def test_no_sentinels_the_record_holds_the_number_that_ran():
    """The head's learning rate is resolved per head (Pixio: DPT 1e-4, linear 2e-4), never a 0.0 placeholder."""
    nyuv2 = TASKS.get("nyuv2")
    assert nyuv2.resolve({"head": "dpt"}).params.lr == 1e-4
    assert nyuv2.resolve({"head": "linear"}).params.lr == 2e-4
    assert nyuv2.resolve({"head": "dpt", "lr": "3e-4"}).params.lr == 3e-4
    assert nyuv2.resolve({"head": "linear"}, mini=True).params.lr == 5e-3  # the mini world's, recorded as such
    upernet = TASKS.get("ade20k").resolve({"head": "upernet"})
    assert upernet.components["head"].channels == 512  # its own width, not DPT's
    assert TASKS.get("ade20k").resolve({"head": "dpt"}, mini=True).components["head"].features == 64


def test_show_prints_the_fully_resolved_protocol(monkeypatch):
    from evalsuite import cli

    monkeypatch.setattr(cli.console, "width", 250)
    result = CliRunner().invoke(app, ["show", "nyuv2", "--protocol", "pixio", "--head", "dpt", "-p", "epochs=5",
                                      "-b", "pixio-h16"])
    assert result.exit_code == 0, result.output
    for text in ("nyuv2/pixio/dpt", "features", "256", "lr", "0.0001", "epochs", "blocks (7, 15, 23, 31)",
                 "final norm on", "CLS mean", "squash to 256×256"):
        assert text in result.output, text
    as_json = CliRunner().invoke(app, ["show", "imagenet", "--protocol", "knn", "--json"])
    parsed = json.loads(as_json.output)
    assert parsed["task"]["params"]["ks"] == [10, 20, 100, 200] and parsed["identity"]["protocol"] == "knn"
    bad = CliRunner().invoke(app, ["show", "imagenet", "--protocol", "knn", "-p", "primary_k=7"])
    assert bad.exit_code == 2 and "primary_k=7" in bad.output


# ---------------------------------------------------------------------------------------
# Cell identity
# ---------------------------------------------------------------------------------------
def test_a_fine_tune_default_does_not_invalidate_a_knn_cell(tmp_path, monkeypatch):
    def keys():
        return {p: resolve_cell(CellSpec.build("mae-tiny", "imagenet", weights="random", data="mini", protocol=p), tmp_path).key
                for p in ("knn", "finetune")}

    before = keys()
    imagenet = TASKS.get("imagenet")
    finetune = imagenet.protocols["finetune"]

    @dataclasses.dataclass(frozen=True)
    class SlowerDecay(finetune.params):
        layer_decay: float = 0.75

    monkeypatch.setitem(imagenet.protocols, "finetune", dataclasses.replace(finetune, params=SlowerDecay))
    after = keys()
    assert after["knn"] == before["knn"] and after["finetune"] != before["finetune"]


@pytest.mark.slow
def test_an_operational_setting_skips_a_finished_cell_and_resumes_a_killed_one(tmp_path, monkeypatch):
    from mmengine.runner.loops import IterBasedTrainLoop

    out = tmp_path / "runs"
    common = dict(weights="random", data="mini", out=out)
    params = {"head": "linear", "epochs": 2, "window": 256, "stride": 256}
    straight = evaluate("pixio-tiny", "ade20k", params=params, checkpoint_interval=4, out=tmp_path / "a",
                        weights="random", data="mini")
    real, ran = IterBasedTrainLoop.run_iter, []

    def dying(self, data_batch):
        if self._iter == 6:  # killed after the iteration-4 checkpoint
            raise KeyboardInterrupt
        return real(self, data_batch)

    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", dying)
    with pytest.raises(KeyboardInterrupt):
        evaluate("pixio-tiny", "ade20k", params=params, checkpoint_interval=4, **common)

    def counting(self, data_batch):
        ran.append(self._iter)
        return real(self, data_batch)

    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", counting)
    # another checkpoint interval, batch size and worker count: the same cell, resumed from its work dir
    resumed = evaluate("pixio-tiny", "ade20k", params=params, checkpoint_interval=2, batch_size=7, **common)
    assert ran and ran[0] == 4 and resumed.record.cell_key == straight.record.cell_key
    assert {m["name"]: m["value"] for m in resumed.record.metrics} == pytest.approx(
        {m["name"]: m["value"] for m in straight.record.metrics}, abs=1e-6)
    assert resumed.record.settings["checkpoint_interval"] == 2 and resumed.record.settings["batch_size"] == 7
    skipped = evaluate("pixio-tiny", "ade20k", params=params, checkpoint_interval=8, batch_size=3, **common)
    assert skipped.skipped and skipped.path == resumed.path


# ---------------------------------------------------------------------------------------
# Data identity
# ---------------------------------------------------------------------------------------
GENERATE = "from evalsuite.mini import ensure_mini; import sys; [ensure_mini(n) for n in sys.argv[1:]]"


@pytest.mark.slow
def test_a_mini_world_is_byte_identical_across_processes_and_times(tmp_path):
    """Two generations in separate processes, over a second apart, give the same files: one world, one identity."""
    manifests = []
    for cache in ("a", "b"):
        env = {**os.environ, "EVALSUITE_MINI_CACHE": str(tmp_path / cache)}
        subprocess.run([sys.executable, "-c", GENERATE, "nyuv2-mini", "ff3d-mini"], env=env, check=True, timeout=300)
        manifests.append({p.parent.name: json.loads(p.read_text()) for p in (tmp_path / cache).glob("*/manifest.json")})
        time.sleep(1.1)
    assert manifests[0].keys() == manifests[1].keys() and len(manifests[0]) == 2
    for name, manifest in manifests[0].items():
        assert manifest["files"] == manifests[1][name]["files"], name
        assert manifest["sha256"] == manifests[1][name]["sha256"] and manifest["renderer"].startswith("mujoco ")
