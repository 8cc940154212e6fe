"""Dense tasks: heads, sliding-window inference, SiLog, and mmengine training with resume."""

import math

import pytest
import torch

from conftest import mini_ctx, run_cli_record, run_protocol
from evalsuite.checkpoints import create_backbone
from evalsuite.environment import seed_everything
from evalsuite.registry import HEADS, TASKS
from tasks.dense.inference import slide_inference, window_starts
from tasks.dense.readout import read_maps, readout_dims
from tasks.nyuv2 import silog_loss


def test_window_starts_cover_sizes_not_divisible_by_the_stride():
    assert window_starts(256, 256, 170) == [0]
    assert window_starts(480, 256, 170) == [0, 170, 224]  # the last window is flush with the border
    for length in (257, 300, 481, 640):
        starts = window_starts(length, 256, 170)
        covered = torch.zeros(length)
        for s in starts:
            covered[s : s + 256] = 1
        assert covered.all() and starts[-1] + 256 == length


def _conv_predictor():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def predict(x):
        return conv(x)

    return predict


def test_slide_equals_single_pass_when_one_window_covers_the_image():
    predict = _conv_predictor()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(slide_inference(predict, image, 64, 43, 8), predict(image), atol=1e-6)


def test_slide_handles_awkward_sizes_and_averages_overlaps():
    image = torch.randn(1, 3, 100, 150)
    ones = slide_inference(lambda x: torch.ones(x.shape[0], 1, *x.shape[-2:]), image, 64, 43, 8)
    assert ones.shape == (1, 1, 100, 150) and torch.allclose(ones, torch.ones_like(ones))  # averaged, not summed
    small = slide_inference(lambda x: x[:, :1] * 0 + 1, torch.randn(1, 3, 40, 50), 64, 43, 8)
    assert small.shape == (1, 1, 40, 50)  # padded to the window, cropped back


def test_silog_by_hand():
    gt = torch.tensor([[1.0, 2.0, 0.0, 20.0]])  # the last two are invalid (0, beyond max depth)
    pred = torch.tensor([[math.e, 2.0, 5.0, 5.0]])
    d = torch.tensor([1.0, 0.0])
    expected = math.sqrt((d**2).mean() - 0.5 * d.mean() ** 2)
    assert silog_loss(pred, gt, 1e-3, 10.0, 0.5).item() == pytest.approx(expected)


@pytest.mark.parametrize("head, n_layers", [("linear", 1), ("dpt", 4), ("bins", 4), ("upernet", 4)])
def test_heads_output_shapes(head, n_layers):
    backbone = create_backbone("pixio-tiny", "random")
    layers = list(backbone.meta.default_layers)[-n_layers:]
    spec = HEADS.get(head)
    params = spec.params.build({"features": 32} if head == "dpt" else {})
    dims = readout_dims(backbone, layers, params)
    assert dims == [384] * n_layers  # 192 patch channels ⊕ 192 from the mean of the 8 CLS tokens
    module = spec.build(dims, 5, params, 8, (1e-3, 10.0))
    with torch.no_grad():
        out = module(read_maps(backbone, torch.randn(2, 3, 64, 96), layers, params))
    assert out.shape[0] == 2 and out.shape[1] == (1 if head == "bins" else 5)
    if head == "dpt":
        assert out.shape[-2:] == (64, 96)  # exactly the input resolution
    if head == "upernet":
        assert out.shape[-2:] == (32, 48)  # ×4 of the 8×12 token grid, upsampled by the task
    if head == "bins":
        assert out.min() >= 1e-3 and out.max() <= 10.0  # an expectation over bin centres


def _ctx(tmp_path, name, **settings):
    return mini_ctx(name, tmp_path / "work", **settings)


@pytest.mark.slow
@pytest.mark.parametrize("task, params", [("nyuv2", {"head": "dpt"}), ("ade20k", {"head": "linear"})])
def test_dense_tasks_run_on_mini_data(tmp_path, task, params):
    t = TASKS.get(task)
    out = run_protocol(task, create_backbone("pixio-tiny", "random"), {**params, "epochs": 1, "window": 256, "stride": 256},
                       _ctx(tmp_path, t.mini_dataset))
    names = {m.name for m in out.metrics}
    primary = [m for m in out.metrics if m.primary]
    assert len(primary) == 1 and primary[0].name == t.protocols["pixio"].primary_metric and 0 <= primary[0].value <= 100
    assert (names >= {"d1", "rmse", "abs_rel", "silog"}) if task == "nyuv2" else (names >= {"mIoU", "mAcc", "aAcc"})


def _seeded_backbone():
    seed_everything(0)  # as the runner does: the random backbone and the head init are reproducible
    return create_backbone("pixio-tiny", "random")


@pytest.mark.slow
def test_resume_after_kill_gives_identical_metrics(tmp_path, monkeypatch):
    from mmengine.runner.loops import IterBasedTrainLoop

    params = {"head": "linear", "epochs": 2, "window": 256, "stride": 256}
    straight = run_protocol("ade20k", _seeded_backbone(), params, _ctx(tmp_path / "a", "ade20k-mini", checkpoint_interval=4))
    real = IterBasedTrainLoop.run_iter

    def dying(self, data_batch):
        if self._iter == 6:  # killed after the iteration-4 checkpoint
            raise KeyboardInterrupt
        return real(self, data_batch)

    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", dying)
    with pytest.raises(KeyboardInterrupt):
        run_protocol("ade20k", _seeded_backbone(), params, _ctx(tmp_path / "b", "ade20k-mini", checkpoint_interval=4))
    assert (tmp_path / "b" / "work" / "iter_4.pth").is_file()
    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", real)
    resumed = run_protocol("ade20k", _seeded_backbone(), params, _ctx(tmp_path / "b", "ade20k-mini", checkpoint_interval=4))
    a = {m.name: m.value for m in straight.metrics}
    b = {m.name: m.value for m in resumed.metrics}
    assert a == pytest.approx(b, abs=1e-6)


@pytest.mark.slow
def test_two_process_torchrun_dense_head_matches_one_process(tmp_path):
    """The frozen backbone and a DPT head (no BatchNorm) under DDP see the same global batches as one
    process; rank 0 alone writes the record. SiLog is a statistic of each loss group (Pixio's per-GPU
    batch); with a group of 2, one process groups its batch of 4 as the two processes do."""
    args = ["run", "-b", "pixio-tiny", "-t", "nyuv2", "--data", "mini", "--weights", "random", "--head", "dpt",
            "-p", "epochs=1", "-p", "batch_size=4", "-p", "features=32", "-p", "loss_group=2"]
    metrics = {n: {m["name"]: m["value"] for m in run_cli_record(args, tmp_path / str(n), n, 29547)["metrics"]}
               for n in (1, 2)}
    assert metrics[1] == pytest.approx(metrics[2], rel=0.02)
