"""The feature cache: content-addressed keys, identical warm reads, atomic writes, ls/rm."""

import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from evalsuite import cache
from evalsuite.checkpoints import create_backbone
from evalsuite.cli import app
from evalsuite.contracts import DataSource, RunContext


def _setup(tmp_path):
    data = TensorDataset(torch.randn(10, 3, 32, 32), torch.arange(10) % 3)
    ctx = RunContext(data=DataSource("mini", "test", tmp_path, "m1"), batch_size=4)
    return create_backbone("mae-tiny", "random"), data, ctx


def reduce(model, images):
    return model.global_embedding(images)


def test_cold_then_warm_read_is_identical_and_does_not_recompute(tmp_path, monkeypatch):
    model, data, ctx = _setup(tmp_path)
    cold, labels = cache.cached_features(model, data, ctx, reduce, "global-v1", "train", model.meta.preprocess)
    assert cold.dtype == torch.float16 and cold.shape == (10, 192) and labels.tolist() == (torch.arange(10) % 3).tolist()
    with torch.no_grad():
        direct = model.global_embedding(data.tensors[0])
    assert torch.allclose(cold.float(), direct, atol=1e-2)  # fp16 storage
    monkeypatch.setattr(cache, "_extract_to", lambda *a, **k: pytest.fail("warm read recomputed"))
    warm, _ = cache.cached_features(model, data, ctx, reduce, "global-v1", "train", model.meta.preprocess)
    assert torch.equal(warm, cold)


def test_key_changes_with_everything_that_changes_the_numbers(tmp_path):
    model, _, _ = _setup(tmp_path)
    base = cache.feature_key(model, "r", "m", "train", "float32")
    assert base == cache.feature_key(model, "r", "m", "train", "float32")
    assert len({base, cache.feature_key(model, "r2", "m", "train", "float32"),
                cache.feature_key(model, "r", "m2", "train", "float32"),
                cache.feature_key(model, "r", "m", "val", "float32"),
                cache.feature_key(model, "r", "m", "train", "bfloat16")}) == 5
    model.meta = dataclasses.replace(model.meta, weights="ab" * 32)
    assert cache.feature_key(model, "r", "m", "train", "float32") != base
    model.meta = dataclasses.replace(model.meta, preprocess=dataclasses.replace(model.meta.preprocess, size=(96, 96)))
    assert cache.feature_key(model, "r", "m", "train", "float32") != base


def test_interrupted_extraction_leaves_nothing(tmp_path, monkeypatch):
    model, data, ctx = _setup(tmp_path)
    calls = {"n": 0}

    def dying(m, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return reduce(m, images)

    with pytest.raises(KeyboardInterrupt):
        cache.cached_features(model, data, ctx, dying, "global-v1", "train", model.meta.preprocess)
    assert cache.entries() == [] and not any(p.name.endswith(".partial") for p in cache.cache_root().rglob("*"))


def test_cache_ls_and_rm_cli(tmp_path):
    model, data, ctx = _setup(tmp_path)
    cache.cached_features(model, data, ctx, reduce, "global-v1", "train", model.meta.preprocess)
    cache.cached_features(model, data, ctx, reduce, "global-v1", "val", model.meta.preprocess)
    runner = CliRunner()
    listing = runner.invoke(app, ["cache", "ls"])
    assert listing.exit_code == 0 and "mae-tiny" in listing.output and "global-v1" in listing.output
    assert runner.invoke(app, ["cache", "rm", "mae-tiny"]).exit_code == 0
    assert cache.entries() == []
