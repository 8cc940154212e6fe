"""The dense heads: linear, bins (AdaBins-style), DPT and UperNet, with their parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evalsuite.params import Params, param
from evalsuite.registry import HEADS

from .readout import LAYER_SETS, Readout


# ---------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadSpec:
    """A registered head: its parameters (with its `Readout`) and how to build it. ``outputs`` is
    ``"logits"`` (the task's target turns them into predictions) or ``"depth"`` (metres already)."""

    name: str
    params: type[Params]
    build: Callable[..., nn.Module]  # (in_dims, out_channels, params, patch_size, depth_range) -> module
    outputs: str = "logits"
    description: str = ""


class LinearHead(nn.Module):
    """The linear probe of Pixio (``models/linear.py``) and DINOv2's segmentation BNHead: the last
    map → BatchNorm2d → 1×1 conv."""

    def __init__(self, in_dims: Sequence[int], out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dims[-1])
        self.conv = nn.Conv2d(in_dims[-1], out_channels, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.bn(maps[-1]))


class BinsHead(nn.Module):
    """DINOv2's depth BNHead (``classify=True``, ``norm_strategy="linear"``), whose BatchNorm is
    disabled in the reference: every map bilinearly resized to ``upsample`` × the first map's grid
    and concatenated, a 1×1 conv to ``bins`` logits, weights (ReLU(logit) + 0.1) normalised over
    bins, depth = Σ weight · bin, bins = linspace(min_depth, max_depth, bins)."""

    def __init__(self, in_dims: Sequence[int], bins: int, upsample: int, min_depth: float, max_depth: float):
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv2d(sum(in_dims), bins, 1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, bins))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = [s * self.upsample for s in maps[0].shape[-2:]]
        x = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)
        weights = torch.relu(self.conv(x)) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        return (weights * self.centres[None, :, None, None]).sum(dim=1, keepdim=True)


class ResidualConvUnit(nn.Module):
    """ReLU → 3×3 conv → ReLU → 3×3 conv, plus the input (DPT, no BatchNorm)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT's FeatureFusionBlock: (coarse + unit1(skip)) → unit2 → bilinear (align_corners=True) to
    ``size`` (×2 without one) → 1×1 conv."""

    def __init__(self, c: int, has_skip: bool = True):
        super().__init__()
        self.unit1, self.unit2, self.out = ResidualConvUnit(c), ResidualConvUnit(c), nn.Conv2d(c, c, 1)
        if not has_skip:
            # Pixio's deepest block builds unit1 and never calls it: kept so the head has the reference's
            # parameters (and initial RNG draws), frozen so that DDP needs no unused-parameter search.
            self.unit1.requires_grad_(False)
        self.has_skip = has_skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.unit1(skip)
        x = self.unit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out(x)


class DPTHead(nn.Module):
    """Pixio's DPT head (``evaluation/monodepth/models/dpt.py``, same in ``semseg``): the 4 maps are
    projected (1×1) to ``out_channels``, reassembled at ×4, ×2, ×1, ×½ of the token grid, brought
    to ``features`` channels (3×3, no bias), fused from coarse to fine, and decoded by 3×3 conv →
    ReLU → 1×1 conv at twice the finest level (H/2 for patch 16)."""

    def __init__(self, in_dims: Sequence[int], out_channels: int, features: int, widths: Sequence[int]):
        super().__init__()
        if len(in_dims) != 4 or len(widths) != 4:
            raise ValueError(f"DPT reads 4 blocks into 4 widths, got {len(in_dims)} blocks and widths {tuple(widths)}")
        self.project = nn.ModuleList(nn.Conv2d(d, w, 1) for d, w in zip(in_dims, widths))
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(widths[0], widths[0], 4, stride=4), nn.ConvTranspose2d(widths[1], widths[1], 2, stride=2),
            nn.Identity(), nn.Conv2d(widths[3], widths[3], 3, stride=2, padding=1)])
        self.layer_rn = nn.ModuleList(nn.Conv2d(w, features, 3, padding=1, bias=False) for w in widths)
        self.fusion = nn.ModuleList(FusionBlock(features, has_skip=i < 3) for i in range(4))
        self.output = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(True),
                                    nn.Conv2d(features, out_channels, 1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = [rn(rs(pj(m))) for m, pj, rs, rn in zip(maps, self.project, self.resize, self.layer_rn)]
        x = self.fusion[3](levels[3], size=levels[2].shape[-2:])
        x = self.fusion[2](x, levels[2], size=levels[1].shape[-2:])
        x = self.fusion[1](x, levels[1], size=levels[0].shape[-2:])
        x = self.fusion[0](x, levels[0])
        return self.output(x)


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UperNetHead(nn.Module):
    """UperNet (Xiao et al. 2018) on a ViT, as MAE's segmentation: 4 blocks become a ×4/×2/×1/×½
    pyramid (transposed convs / max-pool), a pyramid-pooling module (scales 1, 2, 3, 6) on the
    coarsest level, a top-down FPN, and a fused 3×3 conv before the classifier."""

    def __init__(self, in_dims: Sequence[int], out_channels: int, channels: int):
        super().__init__()
        if len(in_dims) != 4:
            raise ValueError(f"UperNet reads 4 blocks, got {len(in_dims)}")
        d = in_dims
        self.pyramid = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(d[0], d[0], 2, 2), nn.BatchNorm2d(d[0]), nn.GELU(), nn.ConvTranspose2d(d[0], d[0], 2, 2)),
            nn.ConvTranspose2d(d[1], d[1], 2, 2), nn.Identity(), nn.MaxPool2d(2, ceil_mode=True)])
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(d[3], channels, 1)) for s in (1, 2, 3, 6))
        self.ppm_out = conv_bn_relu(d[3] + 4 * channels, channels, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(d[i], channels, 1) for i in range(3))
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in range(3))
        self.fuse = conv_bn_relu(4 * channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(channels, out_channels, 1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = [up(m) for m, up in zip(maps, self.pyramid)]
        top = levels[3]
        pooled = [F.interpolate(m(top), size=top.shape[-2:], mode="bilinear", align_corners=False) for m in self.ppm]
        laterals = [lat(x) for lat, x in zip(self.lateral, levels[:3])] + [self.ppm_out(torch.cat([top, *pooled], 1))]
        for i in (2, 1, 0):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="bilinear", align_corners=False)
        outs = [self.fpn[i](laterals[i]) for i in range(3)] + [laterals[3]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]], 1))
        return self.classifier(fused)


@dataclass(frozen=True)
class LinearParams(Readout):
    pass


@dataclass(frozen=True)
class DPTParams(Readout):
    layers: str = param("dense", "blocks read (DPT reads 4)", choices=tuple(LAYER_SETS))
    features: int = param(256, "fusion width (Pixio: 256 for every encoder size)", min=1)
    widths: tuple[int, int, int, int] = param((256, 512, 1024, 1024), "reassembly widths (Pixio's out_channels)", min=1)


@dataclass(frozen=True)
class BinsParams(Readout):
    layers: str = param("dinov2", "lin.1 (last) or lin.4 (dinov2: DINOv2's depther blocks)", choices=("last", "dinov2"))
    norm: bool = param(False, "DINOv2's depther reads raw blocks (norm=False)")
    bins: int = param(256, "uniform depth bins", min=2)
    upsample: int = param(4, "the maps are resized to this × the token grid before the conv", min=1)


@dataclass(frozen=True)
class UperNetParams(Readout):
    layers: str = param("dense", "blocks read (UperNet reads 4)", choices=tuple(LAYER_SETS))
    channels: int = param(512, "width of the pyramid-pooling and FPN convs", min=1)


HEADS.register("linear", HeadSpec("linear", LinearParams, lambda dims, out, p, patch, depth_range: LinearHead(dims, out),
                                  description="BatchNorm + 1×1 conv on one block (Pixio's linear probe, DINOv2's BNHead)"))
HEADS.register("dpt", HeadSpec("dpt", DPTParams,
                               lambda dims, out, p, patch, depth_range: DPTHead(dims, out, p.features, p.widths),
                               description="Pixio's DPT: reassemble + fusion over 4 blocks (Ranftl et al. 2021)"))
HEADS.register("bins", HeadSpec("bins", BinsParams,
                                lambda dims, out, p, patch, depth_range: BinsHead(dims, p.bins, p.upsample, *depth_range),
                                outputs="depth", description="DINOv2 lin.1/lin.4 depth bins (linear normalisation)"))
HEADS.register("upernet", HeadSpec("upernet", UperNetParams,
                                   lambda dims, out, p, patch, depth_range: UperNetHead(dims, out, channels=p.channels),
                                   description="UperNet on a 4-level pyramid (MAE's segmentation head)"))
