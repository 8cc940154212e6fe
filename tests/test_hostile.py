"""Nothing silent, nothing lost: the hostile inputs of issue #15, each reproduced through the CLI.

Items 1–6 run end to end (``evalsuite run`` on the mini world); the others check the one actionable
line a user gets instead of a traceback or a confident wrong number."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from evalsuite import cache
from evalsuite.checkpoints import create_backbone
from evalsuite.cli import app
from evalsuite.mini import ensure_mini
from evalsuite.records import RunRecord

runner = CliRunner()
KNN = ["run", "-b", "mae-tiny", "-t", "imagenet", "--protocol", "knn", "--weights", "random"]


def cli(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def records(folder: Path, failed: bool = False) -> list[RunRecord]:
    pattern = "*.failed.json" if failed else "*.json"
    return [RunRecord.load(p) for p in sorted(folder.rglob(pattern)) if failed or not p.name.endswith(".failed.json")]


def top1(result_output: str) -> str:
    return re.search(r"top1\s*│\s*val\s*│\s*([\d.]+)", result_output)[1]


@pytest.fixture(scope="module")
def shared_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-features")


@pytest.fixture
def shared_cache(shared_cache_dir, monkeypatch):
    """One feature cache for the tests that never damage it: k-NN features of the mini world are
    extracted once (the cache is content-addressed, so sharing cannot mix anything up)."""
    monkeypatch.setenv("EVALSUITE_FEATURE_CACHE", str(shared_cache_dir))
    return shared_cache_dir


@pytest.fixture
def own_cache_copy(shared_cache_dir, tmp_path, monkeypatch):
    """A private copy of the shared cache, for tests that damage or delete it."""
    cli(*KNN, "--data", "mini", "--out", tmp_path / "warm", env={"EVALSUITE_FEATURE_CACHE": str(shared_cache_dir)})
    copy = tmp_path / "features"
    shutil.copytree(shared_cache_dir, copy)
    monkeypatch.setenv("EVALSUITE_FEATURE_CACHE", str(copy))
    return copy


@pytest.fixture
def small_folder(tmp_path):
    """A small real-looking ImageFolder (3 classes, 4 train and 3 val images each, no manifest)."""
    mini, root = ensure_mini("imagenet-mini"), tmp_path / "small"
    for split, n in (("train", 4), ("val", 3)):
        for folder in sorted((mini / split).iterdir())[:3]:
            for image in sorted(folder.iterdir())[:n]:
                (root / split / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, root / split / folder.name / image.name)
    return root


# 1. A failing --force re-run keeps the last good record; the leaderboard says a newer attempt failed
@pytest.mark.slow
def test_a_failed_forced_rerun_never_destroys_the_good_record(tmp_path, monkeypatch, shared_cache):
    out = tmp_path / "runs"
    ok = cli(*KNN, "--data", "mini", "--out", out)
    assert ok.exit_code == 0, ok.output
    import tasks.imagenet.protocols as protocols

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(protocols, "knn_classify", broken)
    again = cli(*KNN, "--data", "mini", "--out", out, "--force")
    assert again.exit_code == 1 and "disk full" in again.output
    (good,) = records(out)
    (failed,) = records(out, failed=True)
    assert good.status == "ok" and failed.status == "failed" and failed.cell_key == good.cell_key
    board = cli("leaderboard", out, "--format", "csv")
    assert board.exit_code == 0 and "mae-tiny" in board.output
    assert "a newer attempt failed" in board.output and "disk full" in board.output


# 2. Non-finite features fail the run; nothing is cached (NaN weights are refused at load, #27: finite
# weights that overflow reach the extraction check instead)
def test_overflowing_weights_fail_at_feature_extraction_and_cache_nothing(tmp_path):
    state = {k: torch.full_like(v, 3e38) for k, v in create_backbone("mae-tiny", "random").state_dict().items()}
    save_file(state, tmp_path / "huge.safetensors")
    args = [a if a != "random" else tmp_path / "huge.safetensors" for a in KNN]
    result = cli(*args, "--data", "mini", "--out", tmp_path / "runs")
    assert result.exit_code == 1 and "non-finite" in result.output
    assert cache.entries() == [] and records(tmp_path / "runs") == []


# 3. The feature cache verifies checksums: garbage or truncation is evicted and recomputed
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupted_cached_features_are_evicted_and_recomputed(tmp_path, damage, own_cache_copy):
    out = tmp_path / "runs"
    first = cli(*KNN, "--data", "mini", "--out", out)
    assert first.exit_code == 0, first.output
    (entry,) = [e for e in cache.entries() if e["split"] == "train" and e["reducer"] == "knn-v1"]
    features = Path(entry["path"]) / "features.npy"
    size = features.stat().st_size
    if damage == "garbage":
        features.write_bytes(features.read_bytes()[:128] + np.random.default_rng(0).bytes(size - 128))
    else:
        features.write_bytes(features.read_bytes()[: size // 2])
    again = cli(*KNN, "--data", "mini", "--out", out, "--force")
    assert again.exit_code == 0, again.output
    assert top1(again.output) == top1(first.output)
    meta = json.loads((features.parent / "meta.json").read_text())
    assert features.stat().st_size == size and meta["sha256"]["features.npy"] == cache.hash_file(features)


# 4. The data identity is the bytes read: corrupted copies never pass for the clean data
@pytest.mark.slow
def test_a_corrupted_mini_world_is_refused_with_the_way_to_regenerate(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALSUITE_MINI_CACHE", str(tmp_path / "mini"))
    root = ensure_mini("imagenet-mini")
    victim = sorted((root / "val").rglob("*.JPEG"))[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated inside the cache
    result = cli(*KNN, "--data", "mini", "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert str(victim.relative_to(root)) in result.output and "make-mini imagenet-mini" in result.output
    assert records(tmp_path / "runs") == []


def test_a_modified_copy_of_a_dataset_gets_its_own_identity(tmp_path, small_folder):
    out = tmp_path / "runs"
    copy = tmp_path / "copy"
    shutil.copytree(small_folder, copy)  # a real folder (no manifest), identified by its bytes
    first = cli(*KNN, "--data-root", copy, "--out", out)
    assert first.exit_code == 0, first.output
    victim = sorted((copy / "val").rglob("*.JPEG"))[0]
    victim.write_bytes(np.random.default_rng(1).bytes(victim.stat().st_size))  # same size, other bytes
    second = cli(*KNN, "--data-root", copy, "--out", out)
    assert "skipped" not in second.output  # not "already done": another dataset
    identities = {r.data["identity"] for r in records(out)} | {r.data["identity"] for r in records(out, failed=True)}
    assert len(identities) == 2


# 5. Checkpoint dtypes are checked: integers refused, half precision converted and recorded
def test_checkpoint_dtype_classes_are_checked_and_recorded(tmp_path, small_folder):
    state = create_backbone("mae-tiny", "random").state_dict()
    save_file({k: v.to(torch.int32) for k, v in state.items()}, tmp_path / "int.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, tmp_path / "bf16.safetensors")
    bad = cli(*[a if a != "random" else tmp_path / "int.safetensors" for a in KNN], "--data", "mini", "--out", tmp_path / "r")
    assert bad.exit_code == 2 and "wrong dtypes" in bad.output and "int32" in bad.output
    good = cli(*[a if a != "random" else tmp_path / "bf16.safetensors" for a in KNN], "--data-root", small_folder,
               "--out", tmp_path / "r")
    assert good.exit_code == 0, good.output
    (rec,) = records(tmp_path / "r")
    assert set(rec.backbone["checkpoint_dtypes"]) == {"bfloat16"}


# 6. Mini data passed as real data is mini data
def test_mini_data_run_as_real_lands_in_the_mini_table(tmp_path, shared_cache):
    copy = tmp_path / "looks-real"
    shutil.copytree(ensure_mini("imagenet-mini"), copy)
    result = cli(*KNN, "--data", "real", "--data-root", copy, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    (rec,) = records(tmp_path / "runs")
    assert rec.data["source"] == "mini" and rec.data["world"] == "seed0-small"
    board = cli("leaderboard", tmp_path / "runs", "--format", "md")
    assert "Mini world seed0-small" in board.output and "Real data" not in board.output


# 7–12. One actionable line instead of a traceback
@pytest.mark.parametrize("args, message", [
    (["--weights", "{tmp}/absent.pth"], "no such file"),
    (["--weights", "{tmp}"], "is a directory"),
    (["--device", "foo"], "is not a device"),
    (["-p", "primary_k=7"], "primary_k=7 must be one of"),
    (["-p", "temperature=0"], "temperature=0.0 is out of range: needs 0 < x"),
    (["--batch-size", "0"], "--batch-size must be an integer ≥ 1"),
    (["-p", "ks=ten"], "ks='ten'"),
])
def test_bad_run_options_are_one_line(tmp_path, args, message):
    base = [a for a in KNN if a not in ("--weights", "random")] if "--weights" in args else KNN
    result = cli(*base, *[a.format(tmp=tmp_path) for a in args], "--data", "mini", "--out", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path):
    result = cli(*KNN, "--device", "cuda", "--data", "mini", "--out", tmp_path)
    assert result.exit_code == 2 and "CUDA is not available" in result.output


@pytest.mark.parametrize("params, message", [
    (["--protocol", "linear", "-p", "epochs=-3"], "epochs=-3 is out of range"),
    (["--protocol", "linear", "-p", "epochs=0"], "epochs=0 is out of range"),
    (["--protocol", "linear", "--seeds", "0"], "seeds=0 is out of range"),
    (["--protocol", "linear", "-p", "batch_size=0"], "batch_size=0 is out of range"),
    (["--protocol", "knn", "--seeds", "3"], "has no parameter 'seeds'"),
])
def test_out_of_range_values_are_refused_before_any_work(tmp_path, params, message, monkeypatch):
    import evalsuite.runner as runner_module

    monkeypatch.setattr(runner_module, "execute", lambda *a, **k: pytest.fail("work started"))
    result = cli("run", "-b", "mae-tiny", "-t", "imagenet", "--weights", "random", "--data", "mini", *params,
                 "--out", tmp_path)
    assert result.exit_code == 2 and message in result.output


def test_a_one_class_dataset_gives_no_number(tmp_path):
    root = tmp_path / "one-class"
    for split in ("train", "val"):
        shutil.copytree(next((ensure_mini("imagenet-mini") / split).iterdir()), root / split / "only")
    result = cli(*KNN, "--data-root", root, "--out", tmp_path / "runs")
    assert result.exit_code == 1 and "1 class folder" in result.output and records(tmp_path / "runs") == []


def test_bad_objective_option_suggests_the_name(tmp_path):
    result = cli("pretrain", "-b", "pixio-tiny", "--steps", "1", "--objective", "decoder_dept=8", "--out", tmp_path)
    assert result.exit_code == 2 and "Did you mean 'decoder_depth'" in result.output and "Traceback" not in result.output


def test_ade20k_labels_beyond_the_class_count_name_the_file(tmp_path):
    from tasks.ade20k import ADE20K

    root = tmp_path / "ade"
    shutil.copytree(ensure_mini("ade20k-mini"), root)
    label = sorted((root / "ADEChallengeData2016" / "annotations" / "training").glob("*.png"))[0]
    array = np.array(Image.open(label))
    array[0, 0] = 200
    Image.fromarray(array).save(label)
    with pytest.raises(ValueError, match=f"{label.name}: label 200 is beyond the 7 classes"):
        ADE20K(root, "training", num_classes=7)[0]


@pytest.mark.parametrize("content, message", [
    ("non-tensor", "values that are not tensors"),
    ("random-bytes", "not a checkpoint evalsuite can read safely"),
])
def test_unreadable_checkpoints_are_one_line_without_unsafe_advice(tmp_path, content, message):
    path = tmp_path / "ckpt.pth"
    if content == "non-tensor":
        torch.save({**create_backbone("mae-tiny", "random").state_dict(), "epoch": 3}, path)
    else:
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    result = cli(*[a if a != "random" else path for a in KNN], "--data", "mini", "--out", tmp_path / "runs")
    assert result.exit_code == 2 and message in result.output
    assert "weights_only=False" not in result.output and "trust" not in result.output


# 8. Broken or foreign record files are named and skipped, never a crash
def test_broken_record_files_are_named_and_skipped(tmp_path, shared_cache):
    out = tmp_path / "runs"
    assert cli(*KNN, "--data", "mini", "--out", out).exit_code == 0
    (out / "stray.json").write_text('{"schema_version": 1}')
    (out / "cut.json").write_text('{"run_id": "x", "cell')
    for command in (["leaderboard", out], ["compare", out, out], ["check", out, "--baseline", out]):
        result = cli(*command)
        assert result.exit_code == 0, result.output
        assert "stray.json" in result.output and "missing fields" in result.output
        assert "cut.json" in result.output and "not valid JSON" in result.output


# 13. A check that checks nothing fails
def test_check_against_an_empty_baseline_fails(tmp_path, shared_cache):
    out = tmp_path / "runs"
    assert cli(*KNN, "--data", "mini", "--out", out).exit_code == 0
    empty = tmp_path / "empty.csv"
    assert cli("leaderboard", out, "--tidy-csv", empty).exit_code == 0
    empty.write_text(empty.read_text().splitlines()[0] + "\n")  # the header alone
    result = cli("check", out, "--baseline", empty)
    assert result.exit_code != 0 and "no cells" in result.output
    assert cli("check", out).exit_code == 2  # no default baseline that the repository does not have


# 14. A truncated checkpoint left by a killed run is discarded, not resumed forever
@pytest.mark.slow
def test_a_truncated_checkpoint_in_the_work_dir_is_discarded(tmp_path):
    from evalsuite.cell import CellSpec
    from evalsuite.runner import resolve_cell, work_dir_of

    out = tmp_path / "runs"
    params = ["-p", "epochs=1", "-p", "window=256", "-p", "stride=256", "--head", "linear"]
    cell = resolve_cell(CellSpec.build("pixio-tiny", "ade20k", weights="random", data="mini",
                                       params={"epochs": "1", "window": "256", "stride": "256", "head": "linear"}), out)
    work = work_dir_of(out, cell)
    work.mkdir(parents=True)
    (work / "iter_4.pth").write_bytes(b"PK\x03\x04 truncated")
    (work / "last_checkpoint").write_text(str(work / "iter_4.pth"))
    result = cli("run", "-b", "pixio-tiny", "-t", "ade20k", "--data", "mini", "--weights", "random", *params, "--out", out)
    assert result.exit_code == 0, result.output
    assert records(out)[0].status == "ok"


# 15. `cache rm ""` never wipes the cache
def test_cache_rm_needs_a_match_or_all(tmp_path, own_cache_copy):
    assert cli(*KNN, "--data", "mini", "--out", tmp_path).exit_code == 0
    before = len(cache.entries())
    for args in ([""], [], ["mae-tiny", "--all"]):
        result = cli("cache", "rm", *args)
        assert result.exit_code == 2 and len(cache.entries()) == before
    assert cli("cache", "rm", "--all").exit_code == 0 and cache.entries() == []


# 16. Killed runs' partial folders are swept; records follow the umask
def test_stale_partial_folders_are_swept_and_records_follow_the_umask(tmp_path, shared_cache):
    from evalsuite.fileio import sweep_partials

    stale, fresh = tmp_path / ".x.abc.partial", tmp_path / ".y.def.partial"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert sweep_partials(tmp_path) == 1 and not stale.exists() and fresh.exists()
    previous = os.umask(0o022)
    try:
        assert cli(*KNN, "--data", "mini", "--out", tmp_path / "runs").exit_code == 0
    finally:
        os.umask(previous)
    (path,) = [p for p in (tmp_path / "runs").rglob("*.json")]
    assert path.stat().st_mode & 0o777 == 0o644


# 17. The README's commands run as written
def test_readme_commands_are_runnable():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    listed = [c for c in commands if c.startswith("evalsuite list")]
    assert listed, "the README shows `evalsuite list`"
    from evalsuite.cli import LISTS

    for command in listed:
        assert "|" not in command and command.split()[2] in LISTS, command
    import shlex

    verbatim = [line.strip() for block in blocks for line in block.splitlines() if line.startswith("evalsuite list")]
    for line in verbatim:  # pasted as shown, trailing comment and all (zsh does not strip it)
        result = CliRunner().invoke(app, shlex.split(line)[1:])
        assert result.exit_code == 0, (line, result.output)
