"""The dense and k-NN protocols as the reference code runs them (docs/protocols.md): each test pins one
behaviour with numbers worked out from the reference definition."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import mini_ctx
from evalsuite import engine
from evalsuite.checkpoints import create_backbone
from evalsuite.registry import BACKBONES, HEADS, TASKS
from tasks.dense.augment import PhotometricDraws, long_side_rescale, photometric_distortion, random_crop_box
from tasks.dense.inference import centre_padding, pad_to_multiple, slide_inference, window_starts
from tasks.dense.metrics import DINOV2_DEPTH, PIXIO_DEPTH, SegmentationMeter, depth_metrics
from tasks.dense.readout import DINOV2_DEPTH_BLOCKS, LAYER_SETS, read_maps, readout_dims


# 1. ADE20K, Pixio: the new long side is an integer in [int(0.5·L), int(2·L)] of the image's own long side
@pytest.mark.slow
def test_pixio_rescale_draws_the_long_side_from_half_to_twice_the_image():
    rgb = np.random.default_rng(0).integers(0, 255, (512, 683, 3), dtype=np.uint8)
    label = np.random.default_rng(1).integers(0, 150, (512, 683), dtype=np.uint8)
    sides = []
    for i in range(400):
        image, mask = long_side_rescale(rgb, label, torch.Generator().manual_seed(i), (0.5, 2.0))
        oh, ow = image.shape[:2]
        assert mask.shape == (oh, ow) and oh == int(512 * ow / 683 + 0.5)
        sides.append(ow)
    factors = np.array(sides) / 683
    assert min(sides) >= 341 and max(sides) <= 1366 and all(isinstance(s, int) for s in sides)
    assert factors.min() < 0.55 and factors.max() > 1.9  # the range 0.50–2.00, not mmseg's 0.25–1.00 here
    assert factors.mean() == pytest.approx((341 + 1366) / 2 / 683, abs=0.05)  # ≈ 1.25
    image, mask = long_side_rescale(rgb, label, torch.Generator().manual_seed(3), (0.5, 2.0))
    size = image.shape[1], image.shape[0]
    assert np.array_equal(image, np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC)))  # PIL bicubic
    assert np.array_equal(mask, np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)))  # nearest


# 2. NYUv2, Pixio: RGB and ground truth cropped to the Eigen crop; windows 256/170 over the 426×560 crop
def test_pixio_depth_reads_the_eigen_crop_and_places_windows_as_pixio():
    from tasks.nyuv2 import DEPTH

    cfg = TASKS.get("nyuv2").resolve(protocol="pixio")
    train, test, info = DEPTH.datasets(mini_ctx("nyuv2-mini").data_root, cfg.params)
    rgb, depth = test[0]
    full_rgb, full_depth = test.base[0]
    assert rgb.shape == (426, 560, 3) and depth.shape == (426, 560)
    assert np.array_equal(rgb, full_rgb[45:471, 41:601]) and np.array_equal(depth, full_depth[45:471, 41:601])
    assert train[0][0].shape == (426, 560, 3)
    assert window_starts(426, 256, 170, "pixio") == [0, 170, 340]
    assert window_starts(560, 256, 170, "pixio") == [0, 170, 340, 510]
    assert window_starts(480, 256, 170, "flush") == [0, 170, 224]  # mmseg's, for the DINOv2 protocols
    seen = []
    out = slide_inference(lambda x: (seen.append(x.shape[0]), torch.ones(x.shape[0], 1, *x.shape[-2:]))[1],
                          torch.zeros(1, 3, 426, 560), 256, 170, "pixio", "mean")
    assert sum(seen) == 12 and out.shape == (1, 1, 426, 560) and torch.equal(out, torch.ones_like(out))


def test_pixio_windows_are_zero_padded_bottom_right_and_cropped_back():
    image = torch.arange(6 * 7, dtype=torch.float32).view(1, 1, 6, 7).expand(1, 3, 6, 7)
    windows = []

    def predict(x):
        windows.append(x.clone())
        return x[:, :1]

    out = slide_inference(predict, image, 4, 3, "pixio", "mean")
    assert torch.equal(out, image[:, :1])  # every pixel averaged over the windows covering it: itself
    (crops,) = windows
    assert crops.shape == (6, 3, 4, 4)  # rows {0, 3} × cols {0, 3, 6}
    assert torch.equal(crops[2, 0, :, 1:], torch.zeros(4, 3))  # the window at col 6 is padded with zeros right


# 3. DPT = Pixio's DPTHead: 5632·D + 28,321,536 + 257·classes parameters (docs/protocols.md)
@pytest.mark.parametrize("backbone, dim", [("pixio-b16", 768), ("pixio-l16", 1024), ("pixio-h16", 1280)])
@pytest.mark.parametrize("classes", [1, 150])
def test_dpt_head_has_the_reference_parameter_count(backbone, dim, classes):
    spec = HEADS.get("dpt")
    with torch.device("meta"):
        encoder = BACKBONES.get(backbone).build()
        dims = [2 * encoder.meta.embed_dim] * 4  # patch ⊕ mean CLS of each block read
        head = spec.build(dims, classes, spec.params.build(), 16, (1e-3, 10.0))
    assert encoder.meta.embed_dim == dim
    assert sum(p.numel() for p in head.parameters()) == 5632 * dim + 28_321_536 + 257 * classes


def test_dpt_head_output_is_half_resolution_for_patch_16_and_pixio_readout():
    backbone = create_backbone("pixio-tiny", "random")  # patch 8: the head's output is at the input resolution
    params = HEADS.get("dpt").params.build({"features": 16, "widths": "16,32,64,64"})
    layers = params.layer_indices(backbone)
    assert layers == (1, 3, 5, 7)  # depth//4·(s+1)−1
    head = HEADS.get("dpt").build(readout_dims(backbone, layers, params), 3, params, 8, (1e-3, 10.0))
    with torch.no_grad():
        out = head(read_maps(backbone, torch.randn(2, 3, 64, 96), layers, params))
    assert out.shape == (2, 3, 64, 96)  # 8×12 tokens → ×4 → fused ×2: 2·4·grid = H·8/8 (patch 16: H/2)
    unused = head.fusion[3].unit1
    assert not any(p.requires_grad for p in unused.parameters())  # built as in Pixio, never called


# 4. silog follows the protocol
def test_silog_of_a_biased_prediction_under_each_definition():
    gt = torch.full((1, 1, 40), 2.0)
    pred = gt.clone()
    pred[0, 0, :20] *= math.exp(0.2)  # e = 0.2 on half the pixels, 0 on the rest: mean e² = 0.02, mean e = 0.1
    pixio = depth_metrics(pred, gt, convention=PIXIO_DEPTH)["silog"]
    dinov2 = depth_metrics(pred, gt, convention=DINOV2_DEPTH)["silog"]
    assert pixio == pytest.approx(math.sqrt(0.02 - 0.5 * 0.01))  # Pixio: λ = 0.5, no ×100 → 0.1225
    assert dinov2 == pytest.approx(100 * math.sqrt(0.02 - 0.01))  # DINOv2/DINOv3: λ = 1, ×100 → 10.0
    uniform = torch.full_like(gt, 2.0 * math.exp(0.1))
    assert depth_metrics(uniform, gt, convention=DINOV2_DEPTH)["silog"] == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert depth_metrics(uniform, gt, convention=PIXIO_DEPTH)["silog"] == pytest.approx(math.sqrt(0.01 - 0.005))
    # the bounds: Pixio keeps gt = max_depth, DINOv2's toolbox drops it
    edge = torch.tensor([[[10.0] * 10 + [2.0] * 10]])
    assert depth_metrics(edge, edge, convention=PIXIO_DEPTH)["n_images"] == 1
    assert depth_metrics(edge[..., :10] * 1.0, edge[..., :10], convention=PIXIO_DEPTH)["rmse"] == 0.0
    with pytest.raises(ValueError, match="10 valid"):
        depth_metrics(edge[..., :10], edge[..., :10], convention=DINOV2_DEPTH)
    cfg = TASKS.get("nyuv2").resolve(protocol="pixio")
    from tasks.nyuv2 import DEPTH

    assert DEPTH.definition("silog", cfg.params).startswith("sqrt(mean(e²) − 0.5·mean(e)²)")


# 5. dinov2 depth protocol = DINOv2's depther
def test_dinov2_depther_blocks_readout_bins_and_centre_padding():
    assert DINOV2_DEPTH_BLOCKS == {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}
    with torch.device("meta"):
        for name, blocks in (("dinov2-b14", (2, 5, 8, 11)), ("dinov2-l14", (4, 11, 17, 23)), ("dinov2-g14", (9, 19, 29, 39))):
            assert LAYER_SETS["dinov2"](BACKBONES.get(name).build()) == blocks
    cfg = TASKS.get("nyuv2").resolve(protocol="dinov2")
    head = cfg.components["head"]
    assert (cfg.params.head, head.layers, head.norm, head.cls, head.bins) == ("bins", "dinov2", False, "mean", 256)
    assert (cfg.params.min_depth, cfg.params.max_depth, cfg.params.padding) == (1e-3, 10.0, "centre")
    backbone = create_backbone("dino-tiny", "random")
    dims = readout_dims(backbone, LAYER_SETS["dinov2"](backbone), head)
    assert dims == [2 * 192] * 4  # raw blocks ⊕ CLS: D·n·2 channels in all
    bins = HEADS.get("bins").build(dims, 1, head, 8, (1e-3, 10.0))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bins.modules())  # DINOv2's BNHead has its BN disabled
    with torch.no_grad():  # linear normalisation: weights (ReLU(logit) + 0.1) / Σ
        bins.conv.weight.zero_()
        bins.conv.bias.copy_(torch.cat([torch.tensor([0.9]), torch.full((255,), -1.0)]))
        depth = bins([torch.zeros(1, d, 2, 3) for d in dims])
    centres = torch.linspace(1e-3, 10.0, 256)
    weights = torch.cat([torch.tensor([1.0]), torch.full((255,), 0.1)])
    assert depth.shape == (1, 1, 8, 12)  # ×4 of the first map's grid
    assert torch.allclose(depth, (weights / weights.sum() * centres).sum().expand_as(depth))
    assert centre_padding(480, 14) == (5, 5) and centre_padding(640, 14) == (2, 2) and centre_padding(427, 14) == (3, 4)
    padded = pad_to_multiple(torch.ones(1, 3, 427, 565), 14, "centre")
    assert padded.shape[-2:] == (434, 574) and padded[0, 0, 3, 4] == 1 and padded[0, 0, 2, 4] == 0 and padded[0, 0, 3, 3] == 0


# 6. dinov2 ADE20K linear: patch tokens only (normed), last block, centre padding, mmseg windows
def test_dinov2_ade20k_linear_reads_normed_patch_tokens_only():
    cfg = TASKS.get("ade20k").resolve(protocol="dinov2")
    head = cfg.components["head"]
    assert (cfg.params.head, head.layers, head.norm, head.cls) == ("linear", "last", True, "none")
    assert (cfg.params.padding, cfg.params.placement, cfg.params.merge, cfg.params.window, cfg.params.stride) == (
        "centre", "flush", "mean", 512, 341)
    assert (cfg.params.lr, cfg.params.weight_decay, cfg.params.poly_power, cfg.params.iterations) == (1e-3, 1e-4, 1.0, 40000)
    assert readout_dims(create_backbone("dino-tiny", "random"), (7,), head) == [192]  # D, not 2D


# 7. window merge follows the protocol
def test_pixio_segmentation_sums_window_softmax_where_mmseg_averages_logits():
    image = torch.zeros(1, 3, 4, 6)
    window_logits = torch.tensor([[2.0, 0.0], [0.0, 4.0]])

    def predict(x):  # the two windows (cols 0 and 2, 4 wide, over 6 columns) give constant logits of their own
        assert x.shape[0] == 2
        return window_logits[:, :, None, None].expand(2, 2, *x.shape[-2:]).clone()

    summed = slide_inference(predict, image, 4, 2, "flush", "softmax-sum")
    p1, p2 = torch.softmax(window_logits[0], 0), torch.softmax(window_logits[1], 0)
    assert torch.allclose(summed[0, :, 0, 3], p1 + p2)  # overlap: probabilities summed
    assert torch.allclose(summed[0, :, 0, 0], p1)
    mean = slide_inference(predict, image, 4, 2, "flush", "mean")
    assert torch.allclose(mean[0, :, 0, 3], torch.tensor([1.0, 2.0]))  # logits averaged


# 8. optimisation details of the pixio presets
def test_pixio_presets_batch_warmup_and_align_corners():
    depth, seg = TASKS.get("nyuv2").resolve(protocol="pixio").params, TASKS.get("ade20k").resolve(protocol="pixio").params
    assert (depth.batch_size, depth.loss_group, depth.warmup, depth.warmup_ratio, depth.align_corners) == (32, 4, 0.1, 0.0, True)
    assert (seg.batch_size, seg.warmup, seg.align_corners, seg.merge, seg.rescale_rule) == (16, 0.0, True, "softmax-sum", "long-side")
    assert (depth.epochs, seg.epochs, depth.weight_decay, depth.poly_power) == (60, 60, 0.01, 0.9)
    pixio = engine.Schedule("poly", 1000, warmup_iters=100, warmup_ratio=0.0, power=0.9)
    assert pixio(0) == 0.0 and pixio(50) == pytest.approx(0.5) and pixio(100) == 1.0  # warm-up from 0
    assert pixio(550) == pytest.approx((1 - 450 / 900) ** 0.9)  # poly over the iterations after the warm-up
    assert engine.Schedule("poly", 1000, 0)(500) == pytest.approx(0.5**0.9)  # segmentation: no warm-up


def test_dinov2_depth_schedule_and_momentum_are_mmcvs():
    base = 1e-4
    lr = engine.Schedule("mmcv-cosine", 38400, warmup_iters=12800, warmup_ratio=1e-3, min_ratio=1e-8)
    for i, expected in ((0, 1.0e-7), (6400, 4.67e-5), (12800, 7.50e-5), (19200, 5.0e-5), (25600, 2.5e-5),
                        (32000, 6.70e-6), (38399, 1.17e-12)):
        assert base * lr(i) == pytest.approx(expected, rel=0.01), i
    beta1 = engine.one_cycle_momentum(38400)
    for i, expected in ((0, 0.95), (6400, 0.8913), (11519, 0.85), (12800, 0.8506), (19200, 0.8688), (25600, 0.9037),
                        (32000, 0.9367), (38399, 0.95)):
        assert beta1(i) == pytest.approx(expected, abs=1e-4), i
    ade = engine.Schedule("mmcv-poly", 40000, warmup_iters=1500, warmup_ratio=1e-6, power=1.0)
    assert ade(0) == pytest.approx(1e-6) and ade(20000) == pytest.approx(0.5)
    assert ade(750) == pytest.approx((1 - 750 / 40000) * (1 - 0.5 * (1 - 1e-6)))


def test_depth_loss_is_a_statistic_of_each_per_gpu_group():
    from tasks.nyuv2 import DEPTH, silog_loss

    p = TASKS.get("nyuv2").resolve(protocol="pixio", overrides={"batch_size": 8}).params
    gt = torch.rand(8, 1, 6, 6) * 5 + 1
    pred = gt * torch.exp(torch.randn(8, 1, 1, 1) * 0.3)
    total = DEPTH.loss(pred, gt[:, 0], p)  # 8 samples, groups of 4 dealt as DDP deals them (0, 2, 4, 6 / 1, 3, 5, 7)
    groups = [silog_loss(pred[g::2, 0], gt[g::2, 0], 1e-3, 10.0, 0.5) for g in range(2)]
    assert total == pytest.approx(torch.stack(groups).mean().item())
    assert total != pytest.approx(silog_loss(pred[:, 0], gt[:, 0], 1e-3, 10.0, 0.5).item())


# 9. Pixio's k-NN reads Resize(256) + CenterCrop(256), its other evaluations squash
def test_pixio_knn_transform_is_resize_then_centre_crop():
    from torchvision import transforms as T

    with torch.device("meta"):
        meta = BACKBONES.get("pixio-h16").build().meta
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    reference = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(256), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    assert torch.equal(meta.preprocess_for("knn").transform()(image), reference(image))
    squash = meta.preprocess_for("linear").transform()(image)
    assert squash.shape == (3, 256, 256) and not torch.equal(squash, reference(image))


# 10. MAE's probe head: trunc_normal_(std=0.01) with absolute bounds ±2, i.e. a plain normal
def test_mae_probe_init_is_effectively_untruncated():
    from tasks.imagenet.heads import train_mae_linear_head

    feats, labels = torch.randn(64, 5, 400), torch.arange(64) % 2
    _, W, _ = train_mae_linear_head(feats, labels, 1000, torch.arange(64), epochs=1, batch_size=64, blr=0.0, warmup_epochs=0,
                                    seed=0)
    # blr 0 leaves the init; the folded BatchNorm scales rows by 1/std: undo it with the features' std
    std = (feats[:, 3].var(dim=0, unbiased=False) + 1e-6).sqrt()  # the last block's CLS (row 3 of 5)
    w = (W * std[:, None]).flatten()
    assert w.std().item() == pytest.approx(0.01, rel=0.02)
    beyond = (w.abs() > 0.02).float().mean().item()
    assert beyond == pytest.approx(0.0455, abs=0.005)  # a normal's mass beyond 2σ; truncating at ±2σ gives 0


# 11. DINOv2's linear grid on augmented images: the exact variant, recorded
@pytest.mark.slow
def test_linear_sweep_can_train_on_augmented_views_and_says_so(tmp_path):
    from evalsuite.runner import evaluate

    rec = evaluate("mae-tiny", "imagenet", weights="random", data="mini", out=tmp_path,
                   params={"protocol": "linear", "augment": "true", "epochs": 1, "batch_size": 128}).record
    assert rec.task["params"]["augment"] is True and rec.selected["training"].startswith("augmented")
    cached = evaluate("mae-tiny", "imagenet", weights="random", data="mini", out=tmp_path,
                      params={"protocol": "linear", "epochs": 1, "batch_size": 128}).record
    assert cached.cell_key != rec.cell_key and cached.selected["training"] == "cached centre-crop features"


# mmseg's pipeline pieces of the dinov2 ADE20K protocol, cross-checked against mmseg itself
def mmseg_transforms(monkeypatch):
    """mmseg's transforms module without its package ``__init__`` (which needs mmcv's compiled ops)."""
    import importlib
    import sys
    import types
    from pathlib import Path

    mmseg = pytest.importorskip("mmseg")
    for name in ("mmseg.datasets", "mmseg.datasets.transforms"):
        stub = types.ModuleType(name)
        stub.__path__ = [str(Path(mmseg.__file__).parent.joinpath(*name.split(".")[1:]))]
        monkeypatch.setitem(sys.modules, name, stub)
    return importlib.import_module("mmseg.datasets.transforms.transforms")


def test_photometric_distortion_equals_mmseg_for_the_same_draws(monkeypatch):
    PhotoMetricDistortion = mmseg_transforms(monkeypatch).PhotoMetricDistortion

    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    for seed in range(12):
        np.random.seed(seed)
        theirs = PhotoMetricDistortion().transform({"img": np.ascontiguousarray(rgb[..., ::-1])})["img"][..., ::-1]
        rng = np.random.RandomState(seed)  # replay mmseg's draws in its order
        brightness = rng.uniform(-32, 32) if rng.randint(2) else None
        mode = rng.randint(2)
        contrast = None
        if mode == 1:
            contrast = rng.uniform(0.5, 1.5) if rng.randint(2) else None
        saturation = rng.uniform(0.5, 1.5) if rng.randint(2) else None
        hue = rng.randint(-18, 18) if rng.randint(2) else None
        if mode == 0:
            contrast = rng.uniform(0.5, 1.5) if rng.randint(2) else None
        ours = photometric_distortion(rgb, PhotometricDraws(brightness, contrast, mode == 1, saturation, hue))
        assert np.array_equal(ours, theirs), seed
    draws = [PhotometricDraws.draw(torch.Generator().manual_seed(i)) for i in range(2000)]
    hues = [d.hue for d in draws if d.hue is not None]
    assert min(hues) == -18 and max(hues) == 17  # numpy's randint(-18, 18)


def test_cat_max_ratio_crop_equals_mmseg_for_the_same_draws(monkeypatch):
    RandomCrop = mmseg_transforms(monkeypatch).RandomCrop
    target = np.zeros((64, 80), dtype=np.uint8)
    target[:, 60:] = 1  # class 1 only at the right: most crops are dominated by class 0
    target[:4] = 255
    retried = 0
    for seed in range(30):
        np.random.seed(seed)
        coords = np.arange(64 * 80, dtype=np.float64).reshape(64, 80, 1)  # reveals the crop's offsets
        out = RandomCrop((32, 32), cat_max_ratio=0.75).transform({"img": coords, "gt_seg_map": target.copy(),
                                                                  "seg_fields": ["gt_seg_map"]})
        y1, x1 = divmod(int(out["img"][0, 0, 0]), 80)
        replay = np.random.RandomState(seed)
        calls = []

        def draw(n, replay=replay, calls=calls):
            calls.append(n)
            return int(replay.randint(0, n))

        assert random_crop_box(torch.from_numpy(target), (32, 32), draw, 0.75, 255) == (y1, x1), seed
        retried += len(calls) > 2
    assert retried > 10  # the retry path was exercised


def test_pixio_miou_counts_absent_classes_as_zero():
    meter = {rule: SegmentationMeter(3, absent=rule) for rule in ("zero", "exclude")}
    for m in meter.values():
        m.update(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))  # class 2 never appears
    assert meter["exclude"].compute()["mIoU"] == pytest.approx(1.0)
    assert meter["zero"].compute()["mIoU"] == pytest.approx(2 / 3, abs=1e-6)
