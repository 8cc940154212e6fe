"""The multi-view probe: frozen per-view encoder tokens → a small alternating-attention transformer →
per-pixel rays and depth, per-view pose, and a metric scale (MapAnything's outputs, DUSt3R/MapAnything
style losses). Our own design (no reference trains a probe like this); docs/protocols.md.

Per view, the tokens of the family's dense blocks are concatenated along channels (Pixio keeps its
8 CLS tokens as extra tokens) and projected to ``dim``; a fixed 2-D sin-cos position table is added to
patch tokens and a learned embedding to every token of view 0, the reference view. Blocks alternate
attention within each view (frame) and across all views (global); a learned scale token joins the
global sequence. Outputs:

* per pixel (a linear map of each patch token to patch×patch outputs): a ray direction, as a residual
  on a pinhole camera of 60° vertical field of view (normalised), and the log of the depth along the
  ray → points in the view's camera frame;
* per view i > 0: a quaternion and translation, camera i in view 0's frame (view 0: identity);
* the metric scale (its log), by which the scale-free prediction becomes metric.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from backbones.vit import sincos_pos_embed_2d


class MultiViewProbe(nn.Module):
    def __init__(self, in_dim: int, n_cls: int, grid: tuple[int, int], patch: int, dim: int, depth: int, heads: int):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.grid, self.patch, self.n_cls = grid, patch, n_cls
        self.proj = nn.Linear(in_dim, dim)
        self.register_buffer("pos", sincos_pos_embed_2d(dim, *grid, num_cls=n_cls)[0], persistent=False)
        self.reference = nn.Parameter(torch.zeros(1, 1, dim))
        self.scale_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.frame_blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.global_blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.dense = nn.Linear(dim, patch * patch * 4)
        self.pose = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 7))
        self.scale = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
        for p in (self.reference, self.scale_token):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``tokens`` B×V×T×C (T = CLS + patch tokens of each view) → dict of predictions."""
        B, V, T, _ = tokens.shape
        x = self.proj(tokens) + self.pos
        x = torch.cat([x[:, :1] + self.reference, x[:, 1:]], dim=1)
        scale = self.scale_token.expand(B, -1, -1)
        for frame, glob in zip(self.frame_blocks, self.global_blocks):
            x = frame(x.reshape(B * V, T, -1)).reshape(B, V, T, -1)
            joint = glob(torch.cat([scale, x.reshape(B, V * T, -1)], dim=1))
            scale, x = joint[:, :1], joint[:, 1:].reshape(B, V, T, -1)
        x, scale = self.norm(x), self.norm(scale)
        patches = x[:, :, self.n_cls :]
        h, w = self.grid
        p = self.patch
        dense = self.dense(patches).reshape(B, V, h, w, p, p, 4).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, V, h * p, w * p, 4)
        rays = F.normalize(dense[..., :3] + pinhole_rays(h * p, w * p, dense.device), dim=-1)
        log_depth = dense[..., 3].clamp(-10, 10)
        pose = self.pose(patches.mean(dim=2))  # B×V×7
        quat = F.normalize(pose[..., :4] + torch.tensor([1.0, 0, 0, 0], device=pose.device), dim=-1)
        return {"rays": rays, "depth": log_depth.exp(), "quat": quat, "trans": pose[..., 4:],
                "log_scale": self.scale(scale[:, 0])[:, 0]}


def pinhole_rays(height: int, width: int, device, fov_deg: float = 60.0) -> torch.Tensor:
    """H×W×3 camera-frame rays (OpenCV, z = 1) of a pinhole with the given vertical field of view."""
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([(u - (width - 1) / 2) / focal, (v - (height - 1) / 2) / focal, torch.ones_like(u, dtype=torch.float)],
                       dim=-1).float()


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(w, x, y, z) unit quaternions …×4 → rotation matrices …×3×3."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def geometry(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scale-free geometry of the predictions: camera-frame points, poses (view 0 = identity) and
    points in view 0's frame."""
    points_cam = out["rays"] * out["depth"][..., None]  # B×V×H×W×3
    R = quaternion_to_matrix(out["quat"])
    t = out["trans"]
    V = R.shape[1]
    first = torch.arange(V, device=R.device) == 0
    R = torch.where(first[None, :, None, None], torch.eye(3, device=R.device).expand_as(R), R)
    t = torch.where(first[None, :, None], torch.zeros_like(t), t)
    points = torch.einsum("bvij,bvhwj->bvhwi", R, points_cam) + t[:, :, None, None, :]
    return {"points_cam": points_cam, "points": points, "R": R, "t": t}


def avg_dis(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per set (B): the mean distance from view 0's centre over the GT-valid pixels of all views."""
    dist = points.norm(dim=-1) * valid
    return (dist.flatten(1).sum(1) / (valid.flatten(1).sum(1) + 1e-8)).clamp_min(1e-8)


def geodesic(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    cos = ((R1.transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))


def probe_loss(out: dict[str, torch.Tensor], gt: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scale-normalised L1 on points (view 0's frame), depth and rays; geodesic rotation and L1
    translation (normalised) for views > 0; L1 on the log metric scale (MapAnything/DUSt3R style).
    Each side is normalised by its own mean distance over the GT-valid pixels, as the benchmark."""
    geo = geometry(out)
    valid = gt["valid"]
    f_pred, f_gt = avg_dis(geo["points"], valid), avg_dis(gt["points"], valid)
    norm = lambda x, f: x / f.view(-1, *([1] * (x.dim() - 1)))
    mask = valid[..., None].float()
    count = mask.sum().clamp_min(1) * 3
    points = (norm(geo["points"], f_pred) - norm(gt["points"], f_gt)).abs().mul(mask).sum() / count
    depth = (norm(geo["points_cam"][..., 2], f_pred) - norm(gt["points_cam"][..., 2], f_gt)).abs().mul(valid).sum() / (
        valid.sum().clamp_min(1))
    rays = (out["rays"] - gt["rays"]).abs().mean()
    loss = points + depth + rays
    if valid.shape[1] > 1:
        rotation = geodesic(geo["R"][:, 1:], gt["R"][:, 1:]).mean()
        translation = (norm(geo["t"][:, 1:], f_pred) - norm(gt["t"][:, 1:], f_gt)).abs().mean()
        loss = loss + rotation + translation
    metric = out["log_scale"] + torch.log(f_pred)  # the predicted metric points' mean distance
    return loss + (metric - torch.log(f_gt)).abs().mean()


def metric_outputs(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Predictions in metres (the scale head applied): what the benchmark scores."""
    geo = geometry(out)
    s = out["log_scale"].exp().view(-1, 1, 1, 1, 1)
    poses = torch.zeros(*geo["R"].shape[:2], 4, 4, device=geo["R"].device)
    poses[..., :3, :3], poses[..., :3, 3], poses[..., 3, 3] = geo["R"], geo["t"] * s[..., 0, 0, 0], 1
    return {"points": geo["points"] * s, "points_cam": geo["points_cam"] * s, "rays": out["rays"], "poses": poses}
