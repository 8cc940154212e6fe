"""`evalsuite bench`: the output schema, the timm ratio, the record the leaderboard reads."""

import json

import pytest
from typer.testing import CliRunner

from evalsuite.bench import count_flops, timm_twin
from evalsuite.cli import app
from evalsuite.leaderboard import load_tidy, pivots


def test_bench_reports_both_paths_their_ratio_and_writes_a_record(tmp_path):
    done = CliRunner().invoke(app, ["bench", "-b", "timm:vit_tiny_patch16_224", "--batch-size", "2", "--image-size", "64",
                                    "--warmup", "1", "--steps", "2", "--json", "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    out = json.loads(done.output)
    assert [r["path"] for r in out["results"]] == ["evalsuite", "timm"]
    for r in out["results"]:
        assert set(r) == {"path", "model", "images_per_s", "ms_per_step", "peak_memory_mb", "gflops_per_image",
                          "achieved_tflops", "mfu"}
        assert r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 and r["mfu"] is None  # CPU: no known peak
    # both paths run the same architecture: the same counted FLOPs (16 patches + CLS through 12 blocks)
    assert out["results"][0]["gflops_per_image"] == pytest.approx(out["results"][1]["gflops_per_image"])
    assert out["ratio_to_timm"] == pytest.approx(out["results"][0]["images_per_s"] / out["results"][1]["images_per_s"])
    assert out["settings"]["image_size"] == 64 and out["settings"]["precision"] == "fp32"
    table = pivots(load_tidy(tmp_path))
    assert list(table) == ["bench"] and "bench/cpu/fp32/bs2/64px · images_per_s ↑" in table["bench"].columns


def test_flops_are_counted_and_twins_are_named():
    import torch

    linear = torch.nn.Linear(10, 20, bias=False)
    assert count_flops(lambda: linear(torch.zeros(3, 10))) == 2 * 3 * 10 * 20
    assert timm_twin("timm:convnext_atto") == "convnext_atto" and timm_twin("mae-b16") == "vit_base_patch16_224.mae"
    assert timm_twin("pixio-b16") is None  # 8 class tokens: no timm architecture, no ratio


def test_a_backbone_without_a_timm_twin_says_so(tmp_path):
    done = CliRunner().invoke(app, ["bench", "-b", "pixio-tiny", "--batch-size", "2", "--warmup", "1", "--steps", "1"])
    assert done.exit_code == 0 and "n/a (timm has no pixio-tiny architecture)" in done.output
    bad = CliRunner().invoke(app, ["bench", "-b", "pixio-tiny", "--precision", "fp8"])
    assert bad.exit_code == 2 and "fp32, bf16 or fp16" in bad.output
