from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own weights dir and config lookup; the mini cache is shared per session."""
    monkeypatch.setenv("EVALSUITE_WEIGHTS_DIR", str(tmp_path_factory.mktemp("weights")))
    monkeypatch.setenv("EVALSUITE_CONFIG", str(tmp_path_factory.mktemp("cfg") / "none.toml"))
    monkeypatch.delenv("EVALSUITE_DATA_ROOT", raising=False)
    monkeypatch.setenv("EVALSUITE_MINI_CACHE", str(_mini_cache(tmp_path_factory)))
    monkeypatch.setenv("EVALSUITE_FEATURE_CACHE", str(tmp_path_factory.mktemp("features")))
    torch.manual_seed(0)


_CACHE = {}


def _mini_cache(factory):
    if "path" not in _CACHE:
        _CACHE["path"] = factory.mktemp("mini-cache")
    return _CACHE["path"]


def run_cli_record(args: list[str], out, processes: int = 1, port: int = 29540) -> dict:
    """Run ``evalsuite ARGS --out OUT`` (under torchrun when ``processes`` > 1) and return the one record
    it must leave, whatever the number of processes."""
    import json
    import os
    import subprocess
    import sys

    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]
    done = subprocess.run([sys.executable, *(launcher if processes > 1 else []), "-m", "evalsuite", *args, "--out", str(out)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = Path(out).rglob("*.json")
    return json.loads(path.read_text())
