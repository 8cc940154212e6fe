import json
import os
from dataclasses import dataclass

import pytest
import torch

from evalsuite import records
from evalsuite.contracts import Metric, Task, TaskOutput
from evalsuite.data import DataNotFoundError, resolve_data_root
from evalsuite.params import ParamError, Params, param
from evalsuite.records import RunRecord, atomic_write_text, iter_records
from evalsuite.registry import TASKS
from evalsuite.runner import RunFailed, evaluate


@dataclass(frozen=True)
class ProbeParams(Params):
    mode: str = param("ok", "what the probe does", choices=("ok", "nan", "raise"))


PROBE = Task("probe-test", version=3, family="test", dataset="probe", tolerance=0.1)


class ProbeTask:
    """A fast protocol: the norm of the backbone's global embedding of a fixed image, or a failure."""

    calls = 0

    @staticmethod
    @PROBE.protocol("probe", ProbeParams, primary_metric="score", higher_is_better=True, selection_split="none",
                    report_split="test", variant_keys=("mode",))
    def run(backbone, cfg, ctx):
        ProbeTask.calls += 1
        if cfg.params.mode == "raise":
            raise RuntimeError("boom")
        value = float("nan") if cfg.params.mode == "nan" else backbone.global_embedding(torch.ones(1, 3, 32, 32)).norm().item()
        return TaskOutput([Metric("score", value, "test", True, primary=True)], {"k": 1})


@pytest.fixture(scope="module", autouse=True)
def probe_task():
    if "probe-test" not in TASKS:
        TASKS.register("probe-test", PROBE)


def _record(**changes):
    base = dict(run_id="r1", cell_key="k" * 64, status="ok", started_at="t0", finished_at="t1", evalsuite_version="0",
                git_sha=None, git_dirty=None, task={"name": "x", "label": "x", "version": 1, "variant": {}}, data={"source": "mini"},
                backbone={"name": "b", "weights": "random"}, seed=0,
                metrics=[{"name": "m", "value": 1.5, "split": "val", "higher_is_better": True, "primary": True, "std": None}])
    return RunRecord(**{**base, **changes})


def test_record_round_trip(tmp_path):
    rec = _record()
    path = records.write_record(rec, tmp_path / "a" / "r.json")
    assert RunRecord.load(path) == rec
    assert json.loads(path.read_text())["schema_version"] == records.SCHEMA_VERSION


def test_record_rejects_numbers_on_failure_and_non_finite():
    with pytest.raises(ValueError, match="no metrics"):
        _record(status="failed")
    with pytest.raises(ValueError, match="not a finite"):
        _record(metrics=[{"name": "m", "value": float("nan"), "split": "v", "higher_is_better": True, "primary": True, "std": None}])


def test_per_sample_scores_must_average_to_their_metric():
    assert _record(per_sample={"m": [1.0, 2.0]}).per_sample == {"m": [1.0, 2.0]}
    with pytest.raises(ValueError, match="average 2, not the reported 1.5"):
        _record(per_sample={"m": [1.0, 3.0]})
    with pytest.raises(ValueError, match="belong to a reported metric"):
        _record(per_sample={"other": [1.5]})
    with pytest.raises(ValueError, match="no per-sample"):
        _record(status="failed", metrics=[], per_sample={"m": [1.5]})


def test_unknown_schema_version_is_refused(tmp_path):
    path = tmp_path / "r.json"
    data = json.loads(_record().to_json()) | {"schema_version": 999}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="schema_version 999"):
        RunRecord.load(path)


def test_atomic_write_crash_leaves_old_file_and_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text("old")

    def crash(*_):
        raise KeyboardInterrupt  # killed between writing the temp file and the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_leftover_temp_files_are_never_read_as_records(tmp_path):
    records.write_record(_record(), tmp_path / "r.json")
    (tmp_path / ".r2.json.abc.tmp").write_text("{partial")
    assert [p.name for p, _ in iter_records(tmp_path)] == ["r.json"]


def _run(tmp_path, **kw):
    data = tmp_path / "probe-data"
    data.mkdir(exist_ok=True)
    return evaluate("pixio-tiny", "probe-test", data_root=data, out=tmp_path / "runs", **kw)


def test_run_writes_record_and_skips_done_cell(tmp_path):
    first = _run(tmp_path)
    assert not first.skipped and first.record.status == "ok"
    rec = first.record
    assert rec.task["version"] == 3 and rec.task["label"] == "probe-test/probe/ok"
    assert rec.data["source"] == "real" and len(rec.data["identity"]) == 64
    assert rec.backbone == {"name": "pixio-tiny", "label": "pixio-tiny", "weights": "random", "family": "pixio",
                            "num_params": rec.backbone["num_params"], "official": False}
    assert rec.environment["torch"] == torch.__version__
    calls = ProbeTask.calls
    second = _run(tmp_path)
    assert second.skipped and ProbeTask.calls == calls and second.path == first.path
    third = _run(tmp_path, force=True)
    assert not third.skipped and ProbeTask.calls == calls + 1
    other_seed = _run(tmp_path, seed=1)
    assert other_seed.path != first.path


@pytest.mark.parametrize("mode, message", [("raise", "boom"), ("nan", "non-finite")])
def test_failed_run_records_error_never_a_number(tmp_path, mode, message):
    with pytest.raises(RunFailed, match=message) as info:
        _run(tmp_path, params={"mode": mode})
    rec = RunRecord.load(info.value.path)
    assert rec.status == "failed" and rec.metrics == [] and message in rec.error
    # a failed cell is retried, not skipped
    with pytest.raises(RunFailed):
        _run(tmp_path, params={"mode": mode})


def test_missing_data_root_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALSUITE_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_root("nyuv2")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "nyuv2") in message and "EVALSUITE_DATA_ROOT" in message
    assert "\n" not in message


def test_config_file_data_roots(tmp_path, monkeypatch):
    (tmp_path / "ade").mkdir()
    config = tmp_path / "evalsuite.toml"
    config.write_text(f'[data_roots]\nade20k = "{tmp_path / "ade"}"\n')
    monkeypatch.setenv("EVALSUITE_CONFIG", str(config))
    assert resolve_data_root("ade20k") == tmp_path / "ade"


def test_task_params_are_validated():
    assert PROBE.resolve({"mode": "nan"}).label == "probe-test/probe/nan"
    with pytest.raises(ParamError, match="not one of"):
        PROBE.resolve({"mode": "bogus"})
    with pytest.raises(ParamError, match="no parameter"):
        PROBE.resolve({"lr": "1"})
