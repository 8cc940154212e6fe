import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")  # before any test imports mujoco (metaworld picks its GL backend at import)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own weights dir and config lookup; the mini cache is shared per session."""
    monkeypatch.setenv("EVALSUITE_WEIGHTS_DIR", str(tmp_path_factory.mktemp("weights")))
    monkeypatch.setenv("EVALSUITE_CONFIG", str(tmp_path_factory.mktemp("cfg") / "none.toml"))
    monkeypatch.delenv("EVALSUITE_DATA_ROOT", raising=False)
    monkeypatch.setenv("EVALSUITE_MINI_CACHE", str(_mini_cache(tmp_path_factory)))
    monkeypatch.setenv("EVALSUITE_FEATURE_CACHE", str(tmp_path_factory.mktemp("features")))
    monkeypatch.setenv("EVALSUITE_IDENTITY_CACHE", str(tmp_path_factory.mktemp("identity") / "identity.sqlite"))
    torch.manual_seed(0)


_CACHE = {}


def _mini_cache(factory):
    if "path" not in _CACHE:
        _CACHE["path"] = factory.mktemp("mini-cache")
    return _CACHE["path"]


def mini_ctx(name: str, work_dir=None, seed: int = 0, **kwargs):
    """A RunContext on the generated mini dataset ``name`` (what the runner gives a protocol)."""
    from evalsuite.contracts import RunContext
    from evalsuite.mini import mini_source

    return RunContext(data=mini_source(name), seed=seed, work_dir=work_dir, **kwargs)


def run_protocol(task: str, backbone, params: dict, ctx, mini: bool = True):
    """Resolve ``params`` (``protocol`` included) for ``task`` and run it as the runner would."""
    from evalsuite.registry import TASKS

    cfg = TASKS.get(task).resolve(params, mini=mini)
    return cfg.protocol.run(backbone, cfg, ctx)


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


def ok_record(run_id: str, task: str, label: str, metric: str, value: float, *, data: str = "mini",
              higher_is_better: bool = True, variant: dict | None = None, **fields):
    """A finished record of one primary metric (``fields``: per_sample, dataset_samples, finished_at…);
    ``variant``: its score-affecting values that differ from the protocol's defaults."""
    from evalsuite.records import RunRecord

    base = dict(run_id=run_id, cell_key=run_id.ljust(16, "0"), status="ok", started_at="t0",
                finished_at="2026-01-01T00:00:00", evalsuite_version="0", git_sha=None, git_dirty=None,
                task={"name": task.split("/")[0], "label": task, "version": 1, "tolerance": 0.5,
                      "variant": dict(variant or {})},
                data={"source": data, "world": "seed0-small" if data == "mini" else "", "root": "/x", "identity": "abc"},
                backbone={"name": label.split("@")[0], "label": label, "weights": "random"}, seed=0,
                metrics=[{"name": metric, "value": value, "split": "val", "higher_is_better": higher_is_better,
                          "primary": True, "std": None}])
    return RunRecord(**{**base, **fields})
