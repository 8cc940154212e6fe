"""Our backbones against independent implementations (transformers), through our official-format loader."""

import pickle

import pytest
import torch

from backbones import dinov2, mae, pixio
from backbones.vit import sincos_pos_embed_2d
from evalsuite.checkpoints import CheckpointError, build_backbone, create_backbone
from evalsuite.registry import BACKBONES

transformers = pytest.importorskip("transformers")  # the `test` extra; CI installs it
TOL = 1e-4


def _save_official(state: dict, path, wrap_model: bool = False):
    torch.save({"model": state} if wrap_model else state, path)
    return str(path)


def _pixio_pair(tmp_path, image_size=64, patch=16):
    cfg = transformers.PixioConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4,
                                   image_size=image_size, patch_size=patch, n_cls_tokens=8, qkv_bias=True)
    ref = transformers.PixioModel(cfg).eval()
    spec = pixio.make_spec("pixio-test", 64, 4, 4, None, None, img_size=image_size, patch=patch)
    path = _save_official(pixio.convert(ref.state_dict()), tmp_path / "pixio_test.pth")
    return ref, build_backbone(spec, path)


@pytest.mark.parametrize("size", [(64, 64), (80, 112)])
def test_pixio_matches_transformers_every_hidden_state(tmp_path, size):
    ref, ours = _pixio_pair(tmp_path)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
        raw = ours.forward_features(x, layers=range(4), norm=False)
        normed = ours.forward_features(x, layers=[3], norm=True)
    hidden = out.hidden_states[1:]  # [0] is the embedding output
    assert len(hidden) == 4
    h, w = size[0] // 16, size[1] // 16
    for i, hs in enumerate(hidden):
        assert torch.allclose(raw.cls[i], hs[:, :8], atol=TOL)
        patch = hs[:, 8:].transpose(1, 2).reshape(2, 64, h, w)
        assert (raw.patch[i] - patch).abs().max() <= TOL
    assert (normed.patch[0] - out.last_hidden_state[:, 8:].transpose(1, 2).reshape(2, 64, h, w)).abs().max() <= TOL
    assert (ours.global_embedding(x) - out.pooler_output).abs().max() <= TOL


def test_pixio_non_square_at_published_resolution(tmp_path):
    """320×448 from the 256-px 16×16 table (the issue's case), on a narrow model."""
    ref, ours = _pixio_pair(tmp_path, image_size=256)
    x = torch.randn(1, 3, 320, 448)
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
        feats = ours.forward_features(x, layers=range(4), norm=False)
    for i in range(4):
        expected = out.hidden_states[i + 1][:, 8:].transpose(1, 2).reshape(1, 64, 20, 28)
        assert (feats.patch[i] - expected).abs().max() <= TOL


def test_pixio_official_key_layout():
    """The official plain state dict keys (PROTOCOLS §1) are exactly our module's keys."""
    with torch.device("meta"):
        model = BACKBONES.get("pixio-b16").build()
    keys = set(model.state_dict())
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(12):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    assert keys == expected
    assert model.state_dict()["cls_token"].shape == (1, 8, 768)
    assert model.state_dict()["pos_embed"].shape == (1, 8 + 256, 768)


def test_mae_matches_transformers_with_tokens_reordered(tmp_path):
    cfg = transformers.ViTMAEConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
                                    image_size=64, patch_size=16, mask_ratio=0.0, layer_norm_eps=1e-6)
    ref = transformers.ViTMAEModel(cfg).eval()
    spec = mae.make_spec("mae-test", 64, 3, 4, 16, None, None, img_size=64)
    ours = build_backbone(spec, _save_official(mae.convert(ref.state_dict()), tmp_path / "mae.pth", wrap_model=True))
    x = torch.randn(2, 3, 64, 64)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        out = ref(x, noise=noise)
        feats = ours.forward_features(x, norm=True)
    tokens = out.last_hidden_state
    restored = torch.gather(tokens[:, 1:], 1, out.ids_restore[..., None].expand(-1, -1, 64))
    assert (feats.patch[0] - restored.transpose(1, 2).reshape(2, 64, 4, 4)).abs().max() <= TOL
    assert (feats.cls[0][:, 0] - tokens[:, 0]).abs().max() <= TOL


def test_mae_sincos_table_matches_reference():
    """First half of our fixed table encodes the column index, as MAE's released weights do.

    transformers builds the canonical [row | column] table and swaps the halves for MAE.
    """
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    canonical = build_2d_sinusoidal_position_embedding(3, 5, 64, cls_token=True)
    mae_layout = torch.cat([canonical[:, 32:], canonical[:, :32]], dim=1)
    assert torch.allclose(sincos_pos_embed_2d(64, 3, 5)[0], mae_layout, atol=1e-6)


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_matches_transformers(tmp_path, registers):
    common = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=4, image_size=56, patch_size=14,
                  layerscale_value=0.5)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        ref = transformers.Dinov2WithRegistersModel(cfg).eval()
    else:
        ref = transformers.Dinov2Model(transformers.Dinov2Config(**common)).eval()
    spec = dinov2.make_spec("dinov2-test", 64, 3, 4, registers, False, None, None, img_size=56)
    ours = build_backbone(spec, _save_official(dinov2.convert(ref.state_dict()), tmp_path / "d.pth"))
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
        raw = ours.forward_features(x, layers=range(3), norm=False)
        normed = ours.forward_features(x, norm=True)
    n = 1 + registers
    for i in range(3):
        hs = out.hidden_states[i + 1]
        assert (raw.patch[i] - hs[:, n:].transpose(1, 2).reshape(2, 64, 4, 4)).abs().max() <= TOL
        assert (raw.cls[i] - hs[:, :1]).abs().max() <= TOL  # registers never reach cls or patch
    assert (normed.cls[0][:, 0] - out.pooler_output).abs().max() <= TOL


def test_dinov2_offset_interpolation_differs_from_plain_resize():
    grid = torch.randn(1, 8, 37, 37)
    a = dinov2.resample_offset(grid, (16, 16))
    b = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    assert a.shape == b.shape and not torch.allclose(a, b)


# Published sizes: Pixio from PROTOCOLS §1 (formula depth·(12D²+13D)+1043D); MAE/DINOv2 encoder formulas.
PUBLISHED = {
    "pixio-b16": 85.86e6, "pixio-l16": 303.38e6, "pixio-h16": 631.01e6, "pixio-1b16": 1361.52e6, "pixio-5b16": 5440.94e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_pixio_parameter_counts_match_published(name):
    assert round(BACKBONES.get(name).num_params() / 1e4) == round(PUBLISHED[name] / 1e4)


@pytest.mark.parametrize("name, dim, depth, patch_tokens", [
    ("mae-b16", 768, 12, 196), ("mae-l16", 1024, 24, 196), ("mae-h14", 1280, 32, 256),
])
def test_mae_parameter_counts(name, dim, depth, patch_tokens):
    p = 14 if name.endswith("14") else 16
    expected = depth * (12 * dim**2 + 13 * dim) + (3 * p * p + 1) * dim + dim + (1 + patch_tokens) * dim + 2 * dim
    assert BACKBONES.get(name).num_params() == expected


@pytest.mark.parametrize("name, millions", [("dinov2-s14", 22.06), ("dinov2-b14", 86.58), ("dinov2-l14", 304.37),
                                            ("dinov2-g14", 1136.48)])
def test_dinov2_parameter_counts(name, millions):
    """21M / 86M / 300M / 1.1B in the paper; exact values are those of the official hub models."""
    assert round(BACKBONES.get(name).num_params() / 1e4) == round(millions * 100)


# ---------------------------------------------------------------------------------------
# strict loading
# ---------------------------------------------------------------------------------------
def _tiny_state():
    return {k: v.clone() for k, v in create_backbone("pixio-tiny", "random").state_dict().items()}


def test_missing_key_is_named(tmp_path):
    state = _tiny_state()
    del state["blocks.3.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks\.3\.attn\.qkv\.weight\]"):
        create_backbone("pixio-tiny", _save_official(state, tmp_path / "w.pth"))


def test_unexpected_key_is_named(tmp_path):
    state = _tiny_state() | {"head.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \[head\.weight\]"):
        create_backbone("pixio-tiny", _save_official(state, tmp_path / "w.pth"))


def test_wrong_shape_is_named(tmp_path):
    state = _tiny_state()
    state["cls_token"] = torch.zeros(1, 1, 192)
    with pytest.raises(CheckpointError, match=r"wrong shapes \[cls_token: checkpoint \(1, 1, 192\) vs model \(1, 8, 192\)\]"):
        create_backbone("pixio-tiny", _save_official(state, tmp_path / "w.pth"))


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_needing_code_execution_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        create_backbone("pixio-tiny", str(path))


def test_real_size_without_weights_says_where_to_put_them():
    with pytest.raises(CheckpointError) as info:
        create_backbone("pixio-h16")
    message = str(info.value)
    assert "pixio_vith16.pth" in message and "EVALSUITE_WEIGHTS_DIR" in message and "hf-hub:facebook/pixio-vith16" in message


def test_decoder_keys_of_a_pretraining_checkpoint_are_dropped_explicitly(tmp_path):
    state = {f"encoder.{k}": v for k, v in _tiny_state().items()}
    state |= {"decoder_embed.weight": torch.zeros(2, 2), "mask_token": torch.zeros(1, 1, 4)}
    model = create_backbone("pixio-tiny", _save_official({"model": state}, tmp_path / "ours.pth"))
    assert torch.equal(model.cls_token, state["encoder.cls_token"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_load_round_trip_gives_identical_features(tmp_path, suffix):
    model = create_backbone("mae-tiny", "random")
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    loaded = create_backbone("mae-tiny", str(path))
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        a, b = model.forward_features(x, layers=[1, -1]), loaded.forward_features(x, layers=[1, -1])
    assert all(torch.equal(p, q) for p, q in zip(a.patch + a.cls, b.patch + b.cls))
    assert len(loaded.meta.weights) == 64


def test_dinov2_chunked_checkpoint_loads_into_flat_blocks(tmp_path):
    """DINOv2 with block_chunks=4 names block i of chunk c ``blocks.c.i`` (global i, Identity padding)."""
    model = create_backbone("dino-tiny", "random")
    chunked = {}
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            i = int(key.split(".")[1])
            key = f"blocks.{i // 2}.{key.removeprefix('blocks.')}"
        chunked[key] = value
    assert "blocks.3.7.norm1.weight" in chunked
    torch.save(chunked, tmp_path / "chunked.pth")
    loaded = create_backbone("dino-tiny", str(tmp_path / "chunked.pth"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_feature_contract_shapes_and_layer_indexing():
    model = create_backbone("dino-tiny", "random")
    x = torch.randn(3, 3, 32, 64)
    feats = model.forward_features(x, layers=[0, -1])
    assert feats.layers == (0, 7)
    assert [tuple(p.shape) for p in feats.patch] == [(3, 192, 4, 8)] * 2
    assert [tuple(c.shape) for c in feats.cls] == [(3, 1, 192)] * 2
    with pytest.raises(ValueError, match="outside"):
        model.forward_features(x, layers=[8])
    with pytest.raises(ValueError, match="multiples of the patch"):
        model.forward_features(torch.randn(1, 3, 30, 32))


# ---------------------------------------------------------------------------------------
# DINOv3 (timm Eva) and Pixel-BERT (torchvision ResNet)
# ---------------------------------------------------------------------------------------
def test_dinov3_h16plus_has_the_published_size():
    """ViT-H+/16: 1280 wide, 32 layers, SwiGLU ratio 6 → 841M (q/v biases kept: +0.08M)."""
    assert round(BACKBONES.get("dinov3-h16plus").num_params() / 1e6) == 841


def test_dinov3_storage_tokens_never_reach_features(tmp_path):
    model = create_backbone("dinov3-s16", "random")
    x = torch.randn(2, 3, 48, 80)
    feats = model.forward_features(x, layers=[2, -1])
    assert [tuple(p.shape) for p in feats.patch] == [(2, 384, 3, 5)] * 2
    assert [tuple(c.shape) for c in feats.cls] == [(2, 1, 384)] * 2
    torch.save(model.state_dict(), tmp_path / "d3.pth")
    loaded = create_backbone("dinov3-s16", str(tmp_path / "d3.pth"))
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x).patch[0], model.forward_features(x).patch[0])


def test_pixelbert_stage_maps_match_torchvision(tmp_path):
    """A torchvision ImageNet checkpoint (fc included) loads; stage maps equal torchvision's own forward."""
    import torchvision

    ref = torchvision.models.resnet18().eval()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    ours = create_backbone("pixelbert-r18", str(tmp_path / "r18.pth"))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = ours.forward_features(x, layers=[0, 1, 2, 3])
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        for stage, got in zip((ref.layer1, ref.layer2, ref.layer3, ref.layer4), feats.patch):
            y = stage(y)
            assert (got - y).abs().max() <= TOL
    assert all(c.shape == (2, 0, p.shape[1]) for c, p in zip(feats.cls, feats.patch))
    assert torch.allclose(ours.global_embedding(x), feats.patch[-1].mean(dim=(2, 3)))


def test_resnext152_32x8d_layout():
    with torch.device("meta"):
        model = BACKBONES.get("pixelbert-x152").build()
    assert [len(s) for s in model.stages] == [3, 8, 36, 3]
    assert model.layer1[0].conv2.groups == 32 and model.layer1[0].conv2.in_channels == 256
