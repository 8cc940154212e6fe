"""CortexBench's behaviour-cloning policy (eai-vc ``mujoco_vc``, mjrl ``BatchNormMLP``) on frozen
embeddings, and the rollouts that score it.

Input: the history of the last 3 frame embeddings fused as [e₋₁ − e₋₂, e₀ − e₋₁, e₀] (``fuse_embeddings_flare``;
the first frame fills the history at an episode's start), then the 4-d proprioception (hand xyz,
gripper opening). Network: BatchNorm1d on the input → 3 × (Linear 256 → ReLU) → Linear 4, the last
layer's initial weights and bias × 0.01. MSE, Adam 1e-3, batch 256.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

HISTORY = 3


def fuse(history: torch.Tensor) -> torch.Tensor:
    """…×3×D (oldest first) → …×3D: [e₋₁ − e₋₂, e₀ − e₋₁, e₀]."""
    return torch.cat([history[..., 1, :] - history[..., 0, :], history[..., 2, :] - history[..., 1, :], history[..., 2, :]],
                     dim=-1)


def demo_inputs(embeddings: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
    """Policy inputs of every step of one demonstration (T×D embeddings, T×4 proprio): the history
    at step t is frames max(t−2, 0), max(t−1, 0), t."""
    T = len(embeddings)
    index = torch.arange(T)
    history = torch.stack([embeddings[(index - k).clamp_min(0)] for k in (2, 1, 0)], dim=1)
    return torch.cat([fuse(history), proprio], dim=-1)


class BatchNormMLP(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (256, 256, 256), out_dim: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(in_dim)]
        dims = (in_dim, *hidden)
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*layers)
        with torch.no_grad():  # mjrl: the last layer starts at 1 % of PyTorch's default init
            self.net[-1].weight.mul_(1e-2)
            self.net[-1].bias.mul_(1e-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HistoryBuffer:
    """Per environment, the last 3 embeddings; filled with the first at an episode's start."""

    def __init__(self):
        self.frames: torch.Tensor | None = None

    def push(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.frames is None:
            self.frames = embeddings[:, None].repeat(1, HISTORY, 1)
        else:
            self.frames = torch.cat([self.frames[:, 1:], embeddings[:, None]], dim=1)
        return fuse(self.frames)


def rollout(envs: list, act: Callable[[np.ndarray, np.ndarray, int], np.ndarray], horizon: int) -> list[bool]:
    """Step every environment together for ``horizon`` steps with ``act(obs n×39, images n×H×W×3, t)``;
    each one's success at the last step (CortexBench's criterion). A failing environment fails the run."""
    stack = lambda items: None if items[0] is None else np.stack(items)  # state-based policies render nothing
    started = [env.reset() for env in envs]
    obs = np.stack([o for o, _ in started])
    images = stack([image for _, image in started])
    success = [False] * len(envs)
    for t in range(horizon):
        actions = np.asarray(act(obs, images, t))
        if not np.isfinite(actions).all():
            raise FloatingPointError(f"the policy gave non-finite actions at step {t}")
        stepped = [env.step(a) for env, a in zip(envs, actions)]
        obs = np.stack([o for o, _, _ in stepped])
        images = stack([image for _, image, _ in stepped])
        success = [s for _, _, s in stepped]
    return success
