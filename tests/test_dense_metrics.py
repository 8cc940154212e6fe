"""Depth and segmentation metrics against hand-computed cases and the reference definitions."""

import math

import pytest
import torch

from tasks.dense.metrics import DINOV2_DEPTH, EIGEN_CROP, PIXIO_DEPTH, SegmentationMeter, depth_metrics, eigen_crop_mask


def test_rmse_is_the_mean_of_per_image_rmses():
    gt = torch.full((2, 10, 11), 2.0)
    pred = gt.clone()
    valid = torch.zeros(2, 10, 11, dtype=torch.bool)
    valid[0, 0, :10] = True  # image 0: 10 valid pixels, all off by 1 m
    valid[1] = True  # image 1: 110 valid pixels, all exact
    pred[0] = 3.0
    m = depth_metrics(pred, gt, valid)
    assert m["rmse"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert m["rmse"] != pytest.approx(math.sqrt(10 / 120))  # pooled over pixels would be 0.289
    assert m["abs_rel"] == pytest.approx((0.5 + 0) / 2) and m["n_images"] == 2


def test_eigen_crop_is_exact():
    mask = eigen_crop_mask(480, 640)
    assert mask.sum() == (471 - 45) * (560) and EIGEN_CROP == (45, 471, 41, 601)
    assert mask[45, 41] and mask[470, 600] and not mask[44, 41] and not mask[471, 41] and not mask[45, 40] and not mask[45, 601]
    gt = torch.full((1, 480, 640), 2.0)
    pred = gt.clone()
    pred[0, :45] = 9.0  # errors only outside the crop
    assert depth_metrics(pred, gt, eigen_crop=True)["abs_rel"] == 0.0
    assert depth_metrics(pred, gt)["abs_rel"] > 0.0
    with pytest.raises(ValueError, match="480×640"):
        depth_metrics(torch.ones(1, 48, 64), torch.ones(1, 48, 64), eigen_crop=True)


def test_range_bounds_are_strict_and_predictions_clamped():
    gt = torch.tensor([[[1e-3] * 5 + [10.0] * 5 + [2.0] * 10]])
    pred = torch.tensor([[[5.0] * 10 + [0.0] * 10]])  # the first 10 are invalid gt; then pred 0 → clamped to 1e-3
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx((2.0 - 1e-3) / 2.0)
    assert m["d1"] == 0.0


def test_delta_threshold_is_strict():
    gt = torch.full((1, 1, 20), 1.0)
    pred = torch.tensor([[[1.25] * 10 + [1.2] * 10]], dtype=torch.float64)
    assert depth_metrics(pred, gt)["d1"] == pytest.approx(0.5)


def test_silog_and_log_metrics_by_hand():
    gt = torch.ones(1, 1, 20)
    pred = torch.tensor([[[math.e] * 10 + [1.0] * 10]])
    m = depth_metrics(pred, gt, convention=DINOV2_DEPTH)
    # e = [1]*10 + [0]*10: mean e² = 0.5, mean e = 0.5 → DINOv2's toolbox: 100·sqrt(0.5 − 0.25) = 50
    assert m["silog"] == pytest.approx(50.0)
    # Pixio's eval_depth: sqrt(0.5 − 0.5·0.25), no ×100
    assert depth_metrics(pred, gt, convention=PIXIO_DEPTH)["silog"] == pytest.approx(math.sqrt(0.375))
    assert m["rmse_log"] == pytest.approx(math.sqrt(0.5))
    assert m["log10"] == pytest.approx(0.5 * math.log10(math.e))


def test_images_with_fewer_than_10_valid_pixels_are_skipped():
    gt = torch.full((2, 1, 20), 2.0)
    gt[1, 0, 9:] = 0.0  # image 1 keeps 9 valid pixels
    pred = gt.clone()
    pred[1] = 7.0
    m = depth_metrics(pred, gt)
    assert m["n_images"] == 1 and m["abs_rel"] == 0.0
    with pytest.raises(ValueError, match="10 valid"):
        depth_metrics(pred[1:], gt[1:])


def test_miou_is_dataset_level_not_per_image():
    meter = SegmentationMeter(2)
    # image A: 1 pixel of class 1, predicted right; 3 pixels class 0 right
    meter.update(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 0, 1]]))
    # image B: 4 pixels class 1, 2 of them predicted 0
    meter.update(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 1, 1, 1]]))
    # dataset level: class 0 I=3 U=5 → 0.6; class 1 I=3 U=5 → 0.6 → mIoU 0.6
    result = meter.compute()
    assert result["mIoU"] == pytest.approx(0.6)
    per_image = (1.0 + (0.0 + 0.5) / 2) / 2  # per-image mIoU averaged: 0.625
    assert result["mIoU"] != pytest.approx(per_image)
    assert result["aAcc"] == pytest.approx(6 / 8)
    assert result["mAcc"] == pytest.approx((3 / 3 + 3 / 5) / 2)


def test_ignore_index_and_absent_classes():
    meter = SegmentationMeter(4, ignore_index=255)
    pred = torch.tensor([[0, 1, 3, 3]])
    target = torch.tensor([[0, 1, 255, 255]])  # class 3 predicted only on ignored pixels; class 2 nowhere
    meter.update(pred, target)
    result = meter.compute()
    assert result["mIoU"] == pytest.approx(1.0)
    assert result["per_class_iou"][2] is None and result["per_class_iou"][3] is None
    with pytest.raises(ValueError, match="outside"):
        meter.update(torch.tensor([[0]]), torch.tensor([[7]]))


def test_miou_matches_mmseg_iou_metric():
    """Cross-check with mmseg's IoUMetric (the `seg` extra)."""
    metrics = pytest.importorskip("mmseg.evaluation.metrics")
    gen = torch.Generator().manual_seed(0)
    mm = metrics.IoUMetric(iou_metrics=["mIoU"], ignore_index=255)
    mm.dataset_meta = {"classes": [str(i) for i in range(6)]}
    ours = SegmentationMeter(6)
    for _ in range(5):
        pred = torch.randint(0, 6, (20, 30), generator=gen)
        gt = torch.randint(0, 7, (20, 30), generator=gen)
        gt[gt == 6] = 255
        ours.update(pred, gt)
        mm.process([], [{"pred_sem_seg": {"data": pred[None]}, "gt_sem_seg": {"data": gt[None]}}])
    theirs = mm.compute_metrics(mm.results)
    result = ours.compute()
    assert result["mIoU"] * 100 == pytest.approx(theirs["mIoU"], abs=0.01)
    assert result["aAcc"] * 100 == pytest.approx(theirs["aAcc"], abs=0.01)
