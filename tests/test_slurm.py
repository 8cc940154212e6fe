"""The Slurm launcher, through submitit's local executor (same job, same environment contract)."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from evalsuite.cli import app
from evalsuite.slurm import Command, requeue_argv

pytestmark = pytest.mark.extra  # needs the robot (metaworld) or slurm (submitit) extra

runner = CliRunner()
PRETRAIN = ["pretrain", "-b", "mae-tiny", "--steps", "3", "--batch-size", "8", "--blr", "5e-3", "--image-size", "64"]


def test_a_requeued_pretraining_resumes_and_other_commands_rerun_as_they_were():
    assert requeue_argv(PRETRAIN) == [*PRETRAIN, "--resume"]
    assert requeue_argv([*PRETRAIN, "--resume"]) == [*PRETRAIN, "--resume"]
    run = ["run", "-b", "mae-b16", "-t", "imagenet"]
    assert requeue_argv(run) == run
    resubmitted = Command(PRETRAIN).checkpoint()
    assert resubmitted.function.argv == [*PRETRAIN, "--resume"]


def test_submission_errors_are_one_actionable_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    result = runner.invoke(app, ["slurm", "--folder", str(tmp_path), "--", "run", "-b", "mae-tiny", "-t", "imagenet"])
    assert result.exit_code == 2 and "sbatch not found" in result.output
    result = runner.invoke(app, ["slurm", "--cluster", "local", "--folder", str(tmp_path)])
    assert result.exit_code == 2 and "after '--'" in result.output
    result = runner.invoke(app, ["slurm", "--cluster", "local", "--nodes", "2", "--folder", str(tmp_path), "--", *PRETRAIN])
    assert result.exit_code == 2 and "one node" in result.output


@pytest.mark.slow
def test_two_task_job_matches_one_process_pretraining(tmp_path, monkeypatch):
    """Each task exports torchrun's variables, so a 2-task job is a 2-process DDP run with the same global batch."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = subprocess.run([sys.executable, "-m", "evalsuite", *PRETRAIN, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert one.returncode == 0, one.stderr[-2000:]
    result = runner.invoke(app, ["slurm", "--cluster", "local", "--tasks-per-node", "2", "--cpus-per-task", "1", "--wait",
                                 "--folder", str(tmp_path / "jobs"), "--", *PRETRAIN, "--out", str(tmp_path / "two")])
    assert result.exit_code == 0, result.output
    assert "submitted job" in result.output and "finished" in result.output
    loss = lambda d: [json.loads(line)["loss"] for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
    assert len(loss("two")) == 3  # two world-1 processes would both be rank 0 and log every step twice
    assert loss("one") == pytest.approx(loss("two"), rel=1e-4, abs=1e-5)
