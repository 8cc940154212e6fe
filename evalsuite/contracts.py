"""The two contracts everything plugs into: Backbone and Task.

A backbone turns images into `Features`; a task turns a backbone into metrics.
Both are registered by name (see `evalsuite.registry`) and described by plain
dataclasses so that records and leaderboards never need to import a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence

import torch
from torch import nn


# ---------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Features:
    """Per requested block: ``patch[i]`` is B×D×h×w, ``cls[i]`` is B×n×D (n may be 0).

    CNNs put stage maps in ``patch`` (their D differs per stage) and n = 0 CLS tokens.
    Register and storage tokens never appear in either list.
    """

    patch: list[torch.Tensor]
    cls: list[torch.Tensor]
    layers: tuple[int, ...]


@dataclass(frozen=True)
class Preprocess:
    """How a family wants its images: the resize rule, size, interpolation and normalisation.

    ``resize="squash"`` resizes both sides to ``size`` (Pixio); ``"resize-crop"`` resizes the
    short side to ``resize_size`` then centre-crops ``size`` (MAE/DINO ImageNet eval).
    """

    size: tuple[int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize: Literal["squash", "resize-crop"] = "resize-crop"
    resize_size: int | None = None

    def transform(self) -> Callable:
        from torchvision import transforms as T

        interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}
        mode = interp[self.interpolation]
        if self.resize == "squash":
            geometry = [T.Resize(self.size, interpolation=mode)]
        else:
            short = self.resize_size or int(round(self.size[0] * 256 / 224))
            geometry = [T.Resize(short, interpolation=mode), T.CenterCrop(self.size)]
        return T.Compose([*geometry, T.ToTensor(), T.Normalize(self.mean, self.std)])


@dataclass(frozen=True)
class BackboneMeta:
    name: str
    family: str
    patch_size: int
    embed_dim: int
    depth: int
    num_cls_tokens: int
    preprocess: Preprocess
    num_params: int = 0
    default_layers: tuple[int, ...] = ()
    weights: str = "random"  # "random", or the sha256 of the loaded checkpoint file

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Backbone(nn.Module):
    """Base class of every registered backbone.

    Subclasses set ``self.meta`` and implement `forward_features`. ``layers`` are
    0-based block indices (negative counts from the end); ``None`` means the last block.
    ``norm=True`` applies the final norm to every requested block (the Pixio/DINOv2 dense
    convention), ``norm=False`` returns raw block outputs.
    """

    meta: BackboneMeta

    def forward_features(
        self, images: torch.Tensor, layers: Sequence[int] | None = None, norm: bool = True
    ) -> Features:
        raise NotImplementedError

    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """One B×D vector per image (the family's published global feature)."""
        feats = self.forward_features(images, norm=True)
        return feats.cls[-1].mean(dim=1)

    def knn_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The feature the family's k-NN protocol reads; the global embedding unless it differs."""
        return self.global_embedding(images)

    def resolve_layers(self, layers: Sequence[int] | None) -> tuple[int, ...]:
        depth = self.meta.depth
        if layers is None:
            return (depth - 1,)
        resolved = tuple(i + depth if i < 0 else i for i in layers)
        bad = [i for i in resolved if not 0 <= i < depth]
        if bad:
            raise ValueError(f"{self.meta.name}: block indices {bad} outside 0..{depth - 1}")
        return resolved


def count_parameters(factory: Callable[[], nn.Module]) -> int:
    """Parameter count of a model built on the meta device: no memory, even for 5B."""
    with torch.device("meta"):
        model = factory()
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------
DataSource = Literal["real", "mini"]


@dataclass(frozen=True)
class TaskSpec:
    """Everything that defines a task's numbers; any change that moves a score bumps ``version``.

    ``params`` holds the protocol parameters with their defaults; ``choices`` restricts the
    variant parameters (e.g. ``head``), and ``variant_keys`` are the parameters that make a
    separate leaderboard column (``nyuv2/dpt`` vs ``nyuv2/linear``).
    """

    name: str
    version: int
    family: str
    primary_metric: str
    higher_is_better: bool
    tolerance: float
    selection_split: str
    report_split: str
    dataset: str
    mini_dataset: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    mini_params: Mapping[str, Any] = field(default_factory=dict)  # overrides for the (tiny) mini world
    presets: Mapping[str, Mapping[Any, Mapping[str, Any]]] = field(default_factory=dict)  # protocol → its params
    quickstart: tuple[Mapping[str, Any], ...] = ()  # variants the quickstart runs (default: every combination)
    leaderboard_metrics: tuple[str, ...] = ()  # shown in the pivot beside the primary metric
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    variant_keys: tuple[str, ...] = ()
    description: str = ""

    def with_params(self, **overrides: Any) -> "TaskSpec":
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            raise ValueError(
                f"task {self.name!r} has no parameter(s) {unknown}; known: {sorted(self.params)}"
            )
        params = dict(self.params)
        for key, value in overrides.items():
            default = self.params[key]
            if default is not None and not isinstance(value, type(default)) and isinstance(value, str):
                value = _coerce(value, type(default), key)
            allowed = self.choices.get(key)
            if allowed is not None and value not in allowed:
                raise ValueError(f"task {self.name!r}: {key}={value!r} is not one of {list(allowed)}")
            params[key] = value
        return dataclasses.replace(self, params=params)

    def resolve(self, overrides: Mapping[str, Any] | None = None, mini: bool = False) -> "TaskSpec":
        """Parameters in order: defaults < the chosen preset(s) < mini-world overrides < ``overrides``."""
        overrides = dict(overrides or {})
        spec = self.with_params(**{k: v for k, v in overrides.items() if k in self.presets})
        for key, table in self.presets.items():
            spec = spec.with_params(**table.get(spec.params[key], {}))
        if mini:
            spec = spec.with_params(**self.mini_params)
        return spec.with_params(**overrides)

    @property
    def label(self) -> str:
        """Leaderboard column name: the task plus its variant parameters."""
        parts = [str(self.params[k]) for k in self.variant_keys if k in self.params]
        return "/".join([self.name, *parts])


def _coerce(value: str, kind: type, key: str) -> Any:
    if kind is bool:
        if value.lower() in {"1", "true", "yes"}:
            return True
        if value.lower() in {"0", "false", "no"}:
            return False
        raise ValueError(f"{key}={value!r} is not a boolean")
    if kind in (tuple, list):
        return kind(float(v) if "." in v or "e" in v else int(v) for v in value.split(","))
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key}={value!r} is not a valid {kind.__name__}") from exc


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    split: str
    higher_is_better: bool
    primary: bool = False
    std: float | None = None


@dataclass
class TaskOutput:
    metrics: list[Metric]
    selected: dict[str, Any] = field(default_factory=dict)
    # Per-sample scores of a metric on its report split, in dataset order, in the metric's units, so
    # that the metric is their mean (top-1: 100 or 0 per image, averaged over probe seeds). Two runs
    # on the same data can then be compared pairwise (``evalsuite compare`` bootstraps the delta).
    per_sample: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a task needs besides the backbone: where the data is, where to compute, the seed."""

    data_root: Path
    data_source: DataSource
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    batch_size: int = 64
    num_workers: int = 0
    work_dir: Path | None = None  # scratch space of training tasks (checkpoints to resume a killed run)
    progress: Any = None  # evalsuite.console.Progress-like; None = silent

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


class Task(Protocol):
    """A registered task: a spec plus ``run``. Registered factories return instances."""

    spec: TaskSpec

    def run(self, backbone: Backbone, spec: TaskSpec, ctx: RunContext) -> TaskOutput: ...
