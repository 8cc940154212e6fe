"""The CLI through typer's CliRunner, on the mini world."""

import json

import pytest
from typer.testing import CliRunner

from evalsuite.cli import app
from evalsuite.records import RunRecord

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "leaderboard", "compare", "check", "list", "quickstart", "data", "slurm"):
        assert command in result.output


def test_unknown_backbone_did_you_mean():
    result = runner.invoke(app, ["run", "--backbone", "does-not-exist", "--task", "imagenet"])
    assert result.exit_code != 0
    assert "unknown backbone 'does-not-exist'" in result.output


def test_typo_suggests_the_right_name():
    result = runner.invoke(app, ["run", "--backbone", "pixio-tni", "--task", "imagenet", "--data", "mini"])
    assert result.exit_code == 2 and "Did you mean 'pixio-tiny'" in result.output


def test_missing_data_root_is_one_actionable_line(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALSUITE_DATA_ROOT", str(tmp_path))
    result = runner.invoke(app, ["run", "-b", "pixio-tiny", "-t", "imagenet"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(tmp_path / "imagenet") in lines[0].replace("\n", "")


def test_list_backbones_and_tasks(monkeypatch):
    from evalsuite import cli

    monkeypatch.setattr(cli.console, "width", 200)
    result = runner.invoke(app, ["list", "backbones"])
    assert result.exit_code == 0 and "pixio-5b16" in result.output and "5440.94M" in result.output
    result = runner.invoke(app, ["list", "tasks"])
    assert result.exit_code == 0 and "imagenet" in result.output


@pytest.mark.slow
def test_run_on_mini_then_leaderboard_and_skip(tmp_path):
    out = tmp_path / "runs"
    args = ["run", "-b", "pixio-tiny", "-t", "imagenet", "--data", "mini", "--protocol", "knn", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (path,) = list(out.rglob("*.json"))
    rec = RunRecord.load(path)
    assert rec.status == "ok" and rec.data["source"] == "mini" and rec.task["label"] == "imagenet/knn"
    assert rec.data["world"] == "seed0-small" and rec.data["root"].endswith("-seed0-small")
    primary = [m for m in rec.metrics if m["primary"]]
    assert len(primary) == 1 and 0 <= primary[0]["value"] <= 100
    assert len(rec.per_sample["top1"]) == 300  # k-NN: one top-1 per val image
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "skipped" in again.output
    board = runner.invoke(app, ["leaderboard", str(out), "--format", "csv"])
    assert board.exit_code == 0 and "pixio-tiny" in board.output and ",mini,seed0-small" in board.output
    tidy = tmp_path / "tidy.csv"
    assert runner.invoke(app, ["leaderboard", str(out), "--tidy-csv", str(tidy)]).exit_code == 0
    # the run's own results pass a check against themselves as baseline
    assert runner.invoke(app, ["check", str(out), "--baseline", str(tidy)]).exit_code == 0


@pytest.mark.slow
def test_make_mini_is_deterministic(tmp_path, monkeypatch):
    hashes = []
    for cache in ("a", "b"):
        monkeypatch.setenv("EVALSUITE_MINI_CACHE", str(tmp_path / cache))
        assert runner.invoke(app, ["data", "make-mini", "ade20k-mini"]).exit_code == 0
        (manifest,) = (tmp_path / cache).glob("*/manifest.json")
        hashes.append(json.loads(manifest.read_text())["sha256"])
    assert hashes[0] == hashes[1]


def test_mini_world_options_need_mini_data():
    result = runner.invoke(app, ["run", "-b", "pixio-tiny", "-t", "imagenet", "--mini-seed", "1"])
    assert result.exit_code == 2 and "--data mini" in result.output
