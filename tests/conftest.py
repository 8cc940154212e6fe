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
