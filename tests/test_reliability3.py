"""Reliability round 3 (issue #27): nothing in a dataset executes, the data identity covers what is
read, every bad input gets one line. Each case goes through the CLI, as the probe did."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from evalsuite.checkpoints import create_backbone
from evalsuite.cli import app
from evalsuite.data import files_digest, hash_file
from evalsuite.mini import ensure_mini
from evalsuite.records import RunRecord
from evalsuite.safeload import UnsafePickleError, load_string_array

runner = CliRunner()
KNN = ["run", "-b", "mae-tiny", "-t", "imagenet", "--protocol", "knn", "--weights", "random"]
FF3D = ["run", "-b", "pixio-tiny", "-t", "ff3d", "--weights", "random", "-p", "dataset=wai", "-p", "resolution=128,96",
        "-p", "epochs=1", "-p", "sets_per_scene=2"]


def cli(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def all_records(folder: Path) -> list[RunRecord]:
    return [RunRecord.load(p) for p in sorted(Path(folder).rglob("*.json"))]


def wai_copy(tmp_path) -> tuple[Path, Path]:
    """A real-looking copy of the ff3d mini scenes (no manifest) and its first test scene."""
    root = tmp_path / "wai"
    shutil.copytree(ensure_mini("ff3d-mini"), root)
    (root / "manifest.json").unlink()
    return root, root / (root / "splits" / "test.txt").read_text().split()[0]


class _Shell:
    """An object whose pickle runs a shell command when unpickled (what a hostile dataset would ship)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


# ---------------------------------------------------------------------------------------
# 1. A data file never executes code
# ---------------------------------------------------------------------------------------
def test_a_pickled_scene_list_that_runs_a_command_is_refused_and_never_runs(tmp_path):
    root, scene = wai_copy(tmp_path)
    marker = tmp_path / "pwned"
    for listing in (root / "splits").glob("*.txt"):  # MapAnything's layout: only .npy scene lists
        names = [*listing.read_text().split(), _Shell(f"touch {marker}")]
        np.save(root / f"wai_scene_list_{listing.stem}.npy", np.array(names, dtype=object), allow_pickle=True)
    shutil.rmtree(root / "splits")
    result = cli(*FF3D, "--data-root", root, "--out", tmp_path / "runs")
    assert result.exit_code != 0
    assert "refused to unpickle" in result.output and "system" in result.output, result.output
    assert not marker.exists()


def test_scene_lists_of_strings_load_without_unpickling_anything_else(tmp_path):
    names = ["scene_a", "scene_b"]
    np.save(tmp_path / "u.npy", np.array(names))  # a unicode array: no pickle at all
    np.save(tmp_path / "o.npy", np.array(names, dtype=object), allow_pickle=True)  # MapAnything's object array
    np.save(tmp_path / "f.npy", np.zeros(3))
    np.save(tmp_path / "x.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    assert load_string_array(tmp_path / "u.npy") == names == load_string_array(tmp_path / "o.npy")
    with pytest.raises(ValueError, match="not a list of names"):
        load_string_array(tmp_path / "f.npy")
    with pytest.raises(ValueError, match="1-D array of strings"):
        load_string_array(tmp_path / "x.npy")
    np.save(tmp_path / "h.npy", np.array([_Shell(f"touch {tmp_path / 'pwned'}")], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError):
        load_string_array(tmp_path / "h.npy")
    assert not (tmp_path / "pwned").exists()


def test_a_hostile_expert_pickle_is_refused_before_it_runs(tmp_path):
    import pickle

    from tasks.robot.protocols import load_expert_pickle

    path = tmp_path / "button-press-v3.pickle"
    path.write_bytes(pickle.dumps([{"images": _Shell(f"touch {tmp_path / 'pwned'}")}]))
    with pytest.raises(UnsafePickleError, match="refused to unpickle"):
        load_expert_pickle(path)
    assert not (tmp_path / "pwned").exists()


def test_no_loader_in_the_package_unpickles_freely():
    """The audit, kept: no ``allow_pickle=True``, every ``torch.load`` with ``weights_only=True``, no
    ``pickle.load``/``yaml.load``/``eval``/``exec`` outside `evalsuite.safeload`."""
    import re

    repo = Path(__file__).resolve().parents[1]
    sources = [p for folder in ("evalsuite", "backbones", "tasks") for p in (repo / folder).rglob("*.py")]
    offenders = []
    for path in sources:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            bad = ("allow_pickle=True" in code
                   or ("torch.load(" in code and "weights_only=True" not in code)
                   or re.search(r"\b(pickle|cloudpickle|dill)\.loads?\(|\byaml\.(unsafe_)?load\(|(?<![\w.])(eval|exec)\(", code)
                   or "pickle.Unpickler" in code and path.name != "safeload.py")
            if bad:
                offenders.append(f"{path.relative_to(repo)}:{n}: {line.strip()}")
    assert offenders == []


# ---------------------------------------------------------------------------------------
# 2. The data identity is computed from the bytes on disk, never read from the manifest
# ---------------------------------------------------------------------------------------
def test_a_mini_world_whose_files_and_hashes_were_edited_is_another_dataset(tmp_path):
    world = tmp_path / "world"
    shutil.copytree(ensure_mini("imagenet-mini"), world)
    out = tmp_path / "runs"
    clean = cli(*KNN, "--data-root", world, "--out", out)
    assert clean.exit_code == 0, clean.output
    manifest = json.loads((world / "manifest.json").read_text())
    victim = sorted((world / "val").rglob("*.JPEG"))[0]
    shutil.copy(sorted((world / "val").rglob("*.JPEG"))[-1], victim)  # another image, same name
    manifest["files"][str(victim.relative_to(world))] = hash_file(victim)  # the per-file hash "fixed" by hand
    (world / "manifest.json").write_text(json.dumps(manifest))
    inconsistent = cli(*KNN, "--data-root", world, "--out", out)
    assert inconsistent.exit_code == 2 and "manifest.json's sha256 does not match its files" in inconsistent.output
    manifest["sha256"] = files_digest({**manifest["files"], "<renderer>": manifest["renderer"]})  # the top one too
    (world / "manifest.json").write_text(json.dumps(manifest))
    edited = cli(*KNN, "--data-root", world, "--out", out)
    assert edited.exit_code == 0, edited.output
    assert "already done" not in edited.output
    assert len({r.data["identity"] for r in all_records(out)}) == 2 == len({r.cell_key for r in all_records(out)})


# ---------------------------------------------------------------------------------------
# 3. Paths that leave the data root are refused (the identity covers only the root)
# ---------------------------------------------------------------------------------------
def test_a_scene_meta_path_out_of_the_data_root_is_refused(tmp_path):
    root, scene = wai_copy(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    meta = json.loads((scene / "scene_meta.json").read_text())
    shutil.copy(scene / meta["frames"][0]["image"], outside / "frame.png")
    meta["frames"][0]["image"] = "../../outside/frame.png"
    (scene / "scene_meta.json").write_text(json.dumps(meta))
    result = cli(*FF3D, "--data-root", root, "--out", tmp_path / "runs")
    assert result.exit_code != 0
    assert "'../../outside/frame.png', which is outside the data root" in result.output.replace("\n", ""), result.output


def test_a_retrieval_image_path_out_of_the_data_root_is_refused(tmp_path):
    root = tmp_path / "retrieval"
    shutil.copytree(ensure_mini("retrieval-mini"), root)
    (root / "manifest.json").unlink()
    data = json.loads((root / "dataset_mini.json").read_text())
    data["images"][0]["filepath"] = "../../outside"
    (root / "dataset_mini.json").write_text(json.dumps(data))
    result = cli("run", "-b", "pixio-tiny", "-t", "retrieval", "--weights", "random", "-p", "dataset=mini", "-p", "epochs=1",
                 "--data-root", root, "--out", tmp_path / "runs")
    assert result.exit_code != 0
    assert "which is outside the data root" in result.output.replace("\n", ""), result.output


# ---------------------------------------------------------------------------------------
# 4. Damaged weights: the same one line for .safetensors and .pth; files that are no checkpoint
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("damage", ["truncated", "random-bytes"])
def test_damaged_weights_are_one_line_whatever_the_format(tmp_path, suffix, damage):
    path = tmp_path / f"ckpt{suffix}"
    state = create_backbone("mae-tiny", "random").state_dict()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(len(data)))
    result = cli(*KNN[:-1], path, "--data", "mini", "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert f"{path} is not a checkpoint evalsuite can read safely" in result.output.replace("\n", ""), result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("weights, message", [("/dev/null", "is not a regular file"), ("empty.pth", "is empty, not a checkpoint"),
                                              ("nan.safetensors", "non-finite values (NaN/inf) in [blocks.0.norm1.weight]")])
def test_weights_that_are_no_checkpoint_or_not_finite_are_refused(tmp_path, weights, message):
    if weights == "empty.pth":
        (tmp_path / weights).touch()
    if weights == "nan.safetensors":
        state = create_backbone("mae-tiny", "random").state_dict()
        state["blocks.0.norm1.weight"][3] = float("nan")
        save_file(state, tmp_path / weights)
    path = weights if weights.startswith("/") else tmp_path / weights
    result = cli(*KNN[:-1], path, "--data", "mini", "--out", tmp_path / "runs")
    assert result.exit_code == 2 and message in result.output.replace("\n", ""), result.output
