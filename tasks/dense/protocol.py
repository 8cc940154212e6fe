"""The dense protocol runner shared by NYUv2 depth and ADE20K segmentation: parameters, the model
(backbone + head), training through `evalsuite.engine`, and evaluation."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from evalsuite import engine
from evalsuite.contracts import Backbone, Metric, RunContext, TaskConfig, TaskOutput
from evalsuite.params import ParamError, Params, param
from evalsuite.registry import HEADS

from .augment import DenseTrainSet, collate, to_input
from .heads import HeadSpec
from .inference import pad_to_multiple, slide_inference
from .readout import Readout, read_maps, readout_dims
from .target import DenseTarget


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------
def dense_model(backbone: Backbone, head: nn.Module, head_spec: HeadSpec, layers: Sequence[int], readout: Readout,
                target: DenseTarget, params):
    """An mmengine `BaseModel`: frozen backbone (eval mode, no_grad) + trainable head.

    ``predict`` pads the input to a multiple of the patch (``params.padding``), runs backbone and head,
    and brings the head's output to the input size: bilinear with ``params.align_corners`` (Pixio:
    True), then cropped back (``right``) or, as DINOv2 does with centre padding, the padded
    prediction resized onto the unpadded image."""
    from mmengine.model import BaseModel

    patch = backbone.meta.patch_size

    class DenseModel(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = backbone.requires_grad_(False)
            self.head = head

        def train(self, mode: bool = True):
            super().train(mode)
            self.backbone.eval()
            return self

        def predict(self, images: torch.Tensor) -> torch.Tensor:
            H, W = images.shape[-2:]
            x = pad_to_multiple(images, patch, params.padding)
            with torch.no_grad():
                maps = read_maps(self.backbone, x, layers, readout)
            out = self.head(maps)
            if params.padding == "centre":
                out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=params.align_corners)
            else:
                out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=params.align_corners)[..., :H, :W]
            return target.predict(out, head_spec, params)

        def forward(self, images, targets=None, mode: str = "tensor"):
            out = self.predict(images)
            if mode != "loss":
                return out
            return {"loss": target.loss(out, targets, params)}

    return DenseModel()


# ---------------------------------------------------------------------------------------
# Protocol parameters and runner
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseParams(Params):
    """Pixio's dense protocol (``evaluation/monodepth``, ``evaluation/semseg``): a frozen encoder, a
    head trained 60 epochs on random 256 crops, sliding-window inference. Tasks and the DINOv2
    protocols override fields; docs/protocols.md gives each value's reference line."""

    head: str = param("dpt", "the head (see `evalsuite list heads`)")
    crop: tuple[int, int] = param((256, 256), "training crop (h, w)", min=1)
    epochs: int | None = param(60, "training epochs (none: use iterations)", min=1)
    iterations: int | None = param(None, "training iterations (none: use epochs)", min=1)
    batch_size: int = param(16, "global training batch", min=1)
    lr: float = param(2e-4, "AdamW learning rate", min=0, min_exclusive=True)
    weight_decay: float = param(0.01, "AdamW weight decay (every head parameter)", min=0)
    schedule: str = param("poly", "poly: warm-up then (1 − t)^power over the rest (Pixio); mmcv-poly / mmcv-cosine: "
                                  "mmcv's hooks, the warm-up multiplying a decay over the whole run (DINOv2)",
                          choices=("poly", "mmcv-poly", "mmcv-cosine"))
    poly_power: float = param(0.9, "power of the poly schedules", min=0, min_exclusive=True)
    warmup: float = param(0.0, "share of iterations with linear warm-up", min=0, max=1, max_exclusive=True)
    warmup_ratio: float = param(0.0, "warm-up starts at this fraction of the lr", min=0, max=1)
    beta1_cycle: bool = param(False, "mmcv's OneCycle momentum on AdamW's β1 (0.95 → 0.85 → 0.95; DINOv2 depth)")
    grad_clip: float | None = param(None, "gradient-norm clipping (none: off)", min=0, min_exclusive=True)
    rescale_rule: str = param("none", "training rescale: none | long-side (Pixio: new long side an integer in "
                                      "[lo·L, hi·L], PIL bicubic) | short-side (mmseg: short side crop·U(lo, hi))",
                              choices=("none", "long-side", "short-side"))
    rescale: tuple[float, float] = param((0.5, 2.0), "ratio range of the training rescale", min=0, min_exclusive=True)
    rotate: float = param(0.0, "random rotation ±degrees with probability ½ (0: none)", min=0)
    cat_max_ratio: float | None = param(None, "retry crops where one class covers more than this share (mmseg)",
                                        min=0, max=1, min_exclusive=True)
    photometric: bool = param(False, "mmseg's PhotoMetricDistortion")
    colour_augment: bool = param(False, "the depth toolbox's ColorAug (gamma, brightness, colour) with probability ½")
    train_pad: str = param("black", "pad of crops larger than the image: black (before normalisation) | mean (after)",
                           choices=("black", "mean"))
    align_corners: bool = param(True, "bilinear upsampling of the head's output (Pixio: True)")
    padding: str = param("right", "input padding to a multiple of the patch: right (cropped back) | centre (DINOv2, "
                                  "prediction resized onto the image)", choices=("right", "centre"))
    inference: str = param("slide", "slide: windows; whole: the image at once", choices=("slide", "whole"))
    window: int = param(256, "sliding-window size", min=1)
    stride: int = param(170, "sliding-window stride", min=1)
    placement: str = param("pixio", "windows at 0, stride, … zero-padded (pixio) | the last flush with the end (flush)",
                           choices=("pixio", "flush"))
    flip_tta: bool = param(False, "average with the prediction of the flipped image")

    def check(self) -> None:
        if (self.epochs is None) == (self.iterations is None):
            raise ParamError("give epochs or iterations, not both (set the other to none)")


# Pixio: AdamW 1e-4 for DPT, 2e-4 for the linear head
PIXIO_HEAD_LR = {"dpt": {"lr": 1e-4}}
# The mini world's protocol: tiny crops and windows and a higher learning rate, so a head learns
# something in the seconds the quickstart can spend (recorded in every mini record).
DENSE_MINI = {"epochs": 10, "batch_size": 8, "crop": (128, 128), "window": 128, "stride": 128, "lr": 5e-3,
              "features": 64, "widths": (64, 128, 256, 256)}


def training_iterations(p, n: int) -> int:
    """Iterations of the run: ``iterations``, or ``epochs`` × full global batches per epoch (the last
    partial batch is dropped, as both references' loaders do)."""
    if p.iterations is not None:
        return p.iterations
    return engine.iterations(p.epochs, max(1, n // min(p.batch_size, n)), n, min(p.batch_size, n))


def run_dense(backbone: Backbone, cfg: TaskConfig, ctx: RunContext, target: DenseTarget) -> TaskOutput:
    """Train the configured head on the frozen backbone, then score the test split."""
    p, head_params = cfg.params, cfg.components["head"]
    head_spec: HeadSpec = HEADS.get(p.head)
    train_base, test_base, info = target.datasets(ctx.data_root, p)
    layers = head_params.layer_indices(backbone)
    in_dims = readout_dims(backbone, layers, head_params)
    n_out = target.out_channels(ctx.data_root, p)
    depth_range = (getattr(p, "min_depth", 1e-3), getattr(p, "max_depth", 10.0))
    head = head_spec.build(in_dims, n_out, head_params, backbone.meta.patch_size, depth_range)
    model = dense_model(backbone, head, head_spec, layers, head_params, target, p).to(ctx.device)
    pre = backbone.meta.preprocess_for(cfg.protocol.name)
    trainset = DenseTrainSet(train_base, target, p, pre.mean, pre.std, ctx.seed)
    iters = training_iterations(p, len(trainset))
    work_dir = ctx.work_dir or tempfile.mkdtemp(prefix="evalsuite-")
    schedule = engine.Schedule(p.schedule, iters, warmup_iters=int(p.warmup * iters), warmup_ratio=p.warmup_ratio,
                               power=p.poly_power, min_ratio=1e-8 if p.schedule == "mmcv-cosine" else 0.0)
    model = engine.train(model, trainset, collate=collate, batch_size=min(p.batch_size, len(trainset)), iters=iters,
                         lr=p.lr, weight_decay=p.weight_decay, schedule=schedule, grad_clip=p.grad_clip,
                         betas=(0.95, 0.999) if p.beta1_cycle else (0.9, 0.999),
                         beta1_schedule=engine.one_cycle_momentum(iters) if p.beta1_cycle else None,
                         work_dir=work_dir, seed=ctx.seed, resume=True, checkpoint_interval=ctx.checkpoint_interval,
                         amp_dtype=ctx.amp_dtype)
    metrics, samples = evaluate(model, target, test_base, p, pre, ctx, n_out)
    out = [Metric(name, value, cfg.protocol.report_split, name in target.higher_is_better,
                  primary=name == cfg.primary_metric, definition=target.definition(name, p))
           for name, value in metrics.items()]
    # per-image scores (depth) average to their metric; dataset-level ones (mIoU) carry per-image areas
    return TaskOutput(out, {**info, "layers": list(layers), "iterations": iters, "selection": "last iteration"},
                      per_sample={k: v for k, v in samples.items() if not isinstance(v, dict)},
                      dataset_samples={k: v for k, v in samples.items() if isinstance(v, dict)})


@torch.inference_mode()
def evaluate(model, target: DenseTarget, test_base: Dataset, p, pre, ctx: RunContext, n_out: int):
    model.eval()

    def infer(x: torch.Tensor) -> torch.Tensor:
        if p.inference == "slide":
            return slide_inference(model.predict, x, p.window, p.stride, p.placement, target.merge(p))
        return model.predict(x)

    scores = []
    for rgb, truth in test_base:
        x = to_input(rgb, pre.mean, pre.std, ctx.device)
        with ctx.autocast():
            out = target.infer(infer, x, p)
            if p.flip_tta:
                out = (out + target.infer(infer, x.flip(-1), p).flip(-1)) / 2
        if not torch.isfinite(out).all():  # an argmax over NaN would still give an mIoU
            raise FloatingPointError("non-finite predictions: the head diverged")
        scores.append(target.score(out.float().cpu(), torch.from_numpy(np.ascontiguousarray(truth)), p))
    return target.aggregate(scores, p, n_out)
