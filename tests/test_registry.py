import sys
import textwrap

import pytest

from evalsuite.registry import BACKBONES, TASKS, Registry, UnknownNameError


def test_decorator_and_lookup():
    reg = Registry("widget")

    @reg.register("alpha")
    def alpha():
        return 1

    assert reg.get("alpha") is alpha
    assert "alpha" in reg and reg.names() == ["alpha"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", lambda: 2)


def test_did_you_mean():
    with pytest.raises(UnknownNameError) as info:
        BACKBONES.get("pixio-h61")
    assert "Did you mean" in str(info.value) and "'pixio-h16'" in str(info.value)
    with pytest.raises(UnknownNameError, match="unknown task 'zzzzzz'"):
        TASKS.get("zzzzzz")


def _write_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_lazy_entry_is_not_imported_until_used(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "lazy_mod_xyz", "def factory():\n    return 'built'\n")
    reg = Registry("widget")
    reg.register_lazy("lazy", "lazy_mod_xyz:factory")
    assert "lazy" in reg.names()
    assert "lazy_mod_xyz" not in sys.modules
    assert reg.get("lazy")() == "built"
    assert "lazy_mod_xyz" in sys.modules


def test_entry_point_plugin(tmp_path, monkeypatch):
    """An installed package adds a backbone through the `evalsuite.backbones` entry-point group."""
    _write_module(tmp_path, "evalsuite_plugin_abc", "def my_backbone(weights=None):\n    return ('plugin', weights)\n")
    dist = tmp_path / "evalsuite_plugin_abc-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evalsuite-plugin-abc\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[evalsuite.backbones]\nplugin-net = evalsuite_plugin_abc:my_backbone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("backbone", entry_point_group="evalsuite.backbones")
    assert "plugin-net" in reg.names()
    assert "evalsuite_plugin_abc" not in sys.modules
    assert reg.get("plugin-net")("w") == ("plugin", "w")


def test_discovery_package_registers_real_families():
    names = BACKBONES.names()
    for name in ("pixio-h16", "pixio-5b16", "mae-h14", "dinov2-g14-reg", "pixio-tiny", "mae-tiny", "dino-tiny"):
        assert name in names
    assert "imagenet" in TASKS.names()
