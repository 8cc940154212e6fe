"""`evalsuite sweep`: the cell plan, resume after a kill, concurrent sweeps into one folder, failing
cells, and the torchrun and Slurm (submitit local) executors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from evalsuite.cli import app
from evalsuite.records import RunRecord
from evalsuite.sweep import plan

KNN = ["--tasks", "imagenet", "--protocols", "knn", "--data", "mini", "--weights", "random"]
_SHARED = {}


@pytest.fixture(autouse=True)
def _one_feature_cache(tmp_path_factory, monkeypatch):
    """Every sweep here reads mae-tiny's imagenet-mini features: extract them once for the module."""
    if "features" not in _SHARED:
        _SHARED["features"] = tmp_path_factory.mktemp("sweep-features")
    monkeypatch.setenv("EVALSUITE_FEATURE_CACHE", str(_SHARED["features"]))


def sweep_cmd(out, *args):
    return [sys.executable, "-m", "evalsuite", "sweep", *args, "--out", str(out)]


def records(out):
    return sorted(p for p in out.rglob("*.json")
                  if not p.name.endswith(".failed.json") and not any(part.startswith(".") for part in p.relative_to(out).parts))


def test_the_plan_is_the_product_and_a_protocol_no_task_has_is_refused():
    cells = plan(["pixio-tiny", "mae-tiny"], ["imagenet", "nyuv2"], ["knn", "pixio"], seeds=2, weights=["random"])
    assert len(cells) == 2 * 2 * 2  # imagenet×knn and nyuv2×pixio, two seeds, two backbones
    assert {(c.spec.task, c.spec.protocol) for c in cells} == {("imagenet", "knn"), ("nyuv2", "pixio")}
    with pytest.raises(ValueError, match="task ade20k has none of the protocols knn"):
        plan(["pixio-tiny"], ["ade20k"], ["knn"])


@pytest.mark.slow
def test_a_killed_sweep_resumes_done_cells_skipped(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "runs"
    args = ["-b", "mae-tiny", "--tasks", "imagenet", "--protocols", "linear", "--seeds", "2", "--data", "mini",
            "--weights", "random", "-p", "epochs=10"]
    proc = subprocess.Popen(sweep_cmd(out, *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    while not records(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # during the second cell (seed 1's heads are training)
    proc.wait()
    assert len(records(out)) == 1
    done = subprocess.run(sweep_cmd(out, *args), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped (done)  mae-tiny @ random × imagenet/linear epochs=10 · seed 0" in done.stdout
    assert "ok  mae-tiny @ random × imagenet/linear epochs=10 · seed 1" in done.stdout
    assert len(records(out)) == 2


@pytest.mark.slow
def test_two_sweeps_into_one_folder_leave_one_good_record_per_cell(tmp_path):
    out = tmp_path / "runs"
    args = ["-b", "mae-tiny", *KNN, "--seeds", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(sweep_cmd(out, *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert all(p.wait(timeout=600) == 0 for p in procs)
    found = records(out)
    assert len(found) == 2 and all(RunRecord.load(p).status == "ok" for p in found)
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp") or p.suffix == ".tmp"]


def test_a_failing_cell_does_not_stop_the_sweep_and_is_reported_at_the_end(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "-b", "mae-tiny", "--tasks", "imagenet", "--protocols", "knn", "--data",
                                      "mini", "--weights", "random", "--weights", str(tmp_path / "missing.pth"),
                                      "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert "ok  mae-tiny @ random × imagenet/knn" in result.output
    assert "1 of 2 cells failed" in result.output and "missing.pth: no such file" in result.output


def test_dry_run_lists_states_and_costs_from_finished_records(tmp_path):
    out = tmp_path / "runs"
    runner = CliRunner()
    assert runner.invoke(app, ["sweep", "-b", "mae-tiny", *KNN, "--out", str(out)]).exit_code == 0
    listed = runner.invoke(app, ["sweep", "-b", "mae-tiny", *KNN, "--seeds", "2", "--out", str(out), "--dry-run", "-f", "json"])
    rows = json.loads(listed.output)
    assert [r["state"] for r in rows] == ["done", "todo"]
    assert rows[1]["estimated_s"] > 0 and json.loads(rows[1]["cell_json"])["seed"] == 1


@pytest.mark.slow
def test_torchrun_and_submitit_executors_give_the_local_records(tmp_path):
    runner = CliRunner()
    local = runner.invoke(app, ["sweep", "-b", "mae-tiny", *KNN, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    value = lambda out: [m["value"] for m in RunRecord.load(records(out)[0]).metrics]
    dist = runner.invoke(app, ["sweep", "-b", "mae-tiny", *KNN, "--executor", "torchrun", "--processes", "2",
                               "--out", str(tmp_path / "torchrun")])
    assert dist.exit_code == 0, dist.output
    assert value(tmp_path / "torchrun") == value(tmp_path / "local")
    assert RunRecord.load(records(tmp_path / "torchrun")[0]).settings["world_size"] == 2
    slurm = runner.invoke(app, ["sweep", "-b", "mae-tiny", *KNN, "--executor", "slurm", "--cluster", "local",
                                "--folder", str(tmp_path / "jobs"), "--out", str(tmp_path / "slurm")])
    assert slurm.exit_code == 0, slurm.output
    assert value(tmp_path / "slurm") == value(tmp_path / "local")


def test_slurm_without_sbatch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    result = CliRunner().invoke(app, ["sweep", "-b", "mae-tiny", *KNN, "--executor", "slurm", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "needs sbatch" in result.output
