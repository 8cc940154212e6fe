"""`evalsuite report`: one offline HTML file with every table and plot, rendered in headless Chromium."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import ok_record
from evalsuite.cli import app
from evalsuite.records import write_record


def record(folder, run_id, backbone, task, metric, scores, data="mini"):
    rec = ok_record(run_id, task, backbone, metric, float(np.mean(scores)), data=data, per_sample={metric: list(scores)},
                    finished_at=f"2026-01-01T00:00:{len(run_id):02d}")
    write_record(rec, folder / f"{run_id}.json")


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "runs"
    record(folder, "r1", "pixio-tiny", "imagenet/linear", "top1", rng.choice([0.0, 100.0], 60))
    record(folder, "r2", "mae-tiny", "imagenet/linear", "top1", rng.choice([0.0, 100.0], 60))
    record(folder, "r3", "pixio-tiny", "nyuv2/pixio/linear", "d1", rng.uniform(20, 60, 30))
    for step, run in ((100, "c1"), (200, "c2"), (300, "c3")):  # a checkpoint series of one backbone
        record(folder, run, f"pixio-tiny@ckpt-{step}k", "imagenet/linear", "top1", rng.choice([0.0, 100.0], 60))
    scores = [100.0] * 83 + [0.0] * 17  # the official checkpoint on real data: the published number applies
    write_record(ok_record("real1", "imagenet/linear", "dinov2-b14@0a1b2c3d", "top1", 83.0, data="real",
                           per_sample={"top1": scores},
                           backbone={"name": "dinov2-b14", "label": "dinov2-b14@0a1b2c3d", "weights": "0a1b2c3d" * 8,
                                     "official": True}), folder / "real1.json")
    return folder


def test_the_report_has_every_table_plot_and_record(results, tmp_path):
    out = tmp_path / "report.html"
    done = CliRunner().invoke(app, ["report", str(results), "--out", str(out)])
    assert done.exit_code == 0, done.output
    page = out.read_text()
    assert "<script" not in page and not re.search(r"(src|href)=[\"']?https?:|url\(https?:", page)  # opens offline
    for section in ("leaderboards", "tasks", "checkpoints", "published", "provenance"):
        assert f"id='{section}'" in page
    # leaderboards: one table per world and task (real: imagenet; mini: imagenet, nyuv2), the published one
    assert page.count("class=\"dataframe leaderboard\"") == 3 and page.count("class=\"dataframe published\"") == 1
    # plots: a bar chart per (world, task), one checkpoint series (pixio-tiny)
    assert page.count("class='task-plot'") == 3 and page.count("class='checkpoint-plot'") == 1
    assert page.count("<svg") == 4
    assert page.count("<details class='provenance'>") == 7
    published = re.search(r"class=\"dataframe published\">.*?</table>", page, re.S).group(0)
    assert "dinov2-b14" in published and "84.5" in published and "-1.5" in published
    assert "pixio-tiny" not in published  # mini cells never get a published number


def test_the_report_renders_in_headless_chromium(results, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the HTML is checked, its rendering is not")
    out = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", str(results), "--out", str(out)]).exit_code == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<table") == 4 and dom.count("<svg") == 4 and "Checkpoints over training" in dom
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1100,1600", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1100) and pixels.std() > 10  # text, tables and bars, not a blank page


def test_a_report_over_nothing_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    done = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")])
    assert done.exit_code == 2 and "nothing to report" in done.output and not (tmp_path / "r.html").exists()
