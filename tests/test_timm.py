"""Any timm model as a backbone: features through timm's forward_intermediates, strict weights, frozen
tasks on the mini world, and one-line errors."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from evalsuite.checkpoints import CheckpointError, create_backbone
from evalsuite.registry import UnknownNameError
from evalsuite.runner import evaluate


def test_vit_features_equal_timms_own_and_registers_never_leave(tmp_path):
    reference = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0,
                                  dynamic_img_size=True).eval()
    state = {k: v for k, v in reference.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    ours = create_backbone("timm:vit_small_patch14_reg4_dinov2", str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 3, 126, 126)
    feats = ours.forward_features(x, layers=[-1], norm=True)
    with torch.no_grad():
        tokens = reference.forward_features(x)  # B × (1 class + 4 registers + 81 patches) × D, normed
    assert feats.cls[0].shape == (2, 1, 384)  # the class token only
    assert torch.allclose(feats.cls[0][:, 0], tokens[:, 0], atol=1e-5)
    assert torch.allclose(feats.patch[0].flatten(2).transpose(1, 2), tokens[:, 5:], atol=1e-5)
    assert torch.allclose(ours.global_embedding(x), reference.forward_head(tokens, pre_logits=True), atol=1e-5)
    assert ours.meta.weights != "random" and ours.meta.default_layers == (8, 9, 10, 11)


def test_weights_load_strictly_and_the_classifier_is_dropped(tmp_path):
    with_head = timm.create_model("convnext_atto", pretrained=False, num_classes=10)
    torch.save(with_head.state_dict(), tmp_path / "ok.pth")
    model = create_backbone("timm:convnext_atto", str(tmp_path / "ok.pth"))
    assert torch.equal(model.model.stem[0].weight, with_head.stem[0].weight)
    broken = dict(with_head.state_dict())
    broken.pop("stages.3.blocks.0.conv_dw.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="stages.3.blocks.0.conv_dw.weight"):
        create_backbone("timm:convnext_atto", str(tmp_path / "broken.pth"))


def test_an_unknown_timm_model_suggests_names_and_offline_defaults_say_where_weights_go():
    with pytest.raises(UnknownNameError, match="Did you mean timm:vit_tiny_patch16_224"):
        create_backbone("timm:vit_tiny_patch16_22", "random")
    with pytest.raises(CheckpointError, match="timm/vit_tiny_patch16_224.safetensors.*hf-hub:timm/vit_tiny_patch16_224"):
        create_backbone("timm:vit_tiny_patch16_224")


@pytest.mark.slow
def test_timm_models_run_frozen_tasks_on_the_mini_world(tmp_path):
    """A CNN through the global-feature path (k-NN), a ViT through the dense path at 128-px crops."""
    knn = evaluate("timm:convnext_atto", "imagenet", weights="random", data="mini", params={"protocol": "knn"},
                   out=tmp_path).record
    assert knn.status == "ok" and knn.backbone["label"] == "timm:convnext_atto"
    depth = evaluate("timm:vit_tiny_patch16_224", "nyuv2", weights="random", data="mini", out=tmp_path,
                     params={"protocol": "pixio", "head": "linear", "epochs": 1}).record
    assert depth.status == "ok" and len(depth.per_sample["d1"]) > 0
