"""The contracts everything plugs into: Backbone, Task (a table of Protocols) and DataSource.

A backbone turns images into `Features`; a task is its data plus a table of registered protocols,
each with its own typed parameters (`evalsuite.params`), metrics and selection/report splits; a
protocol turns a backbone into metrics. Records and leaderboards never need to import a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from .params import ParamError, Params, suggest

if TYPE_CHECKING:
    from .registry import Registry


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

    def describe(self) -> str:
        h, w = self.size
        geometry = (f"squash to {h}×{w}" if self.resize == "squash"
                    else f"resize short side to {self.resize_size or int(round(h * 256 / 224))}, centre-crop {h}×{w}")
        return f"{geometry} ({self.interpolation}), mean {self.mean}, std {self.std}"


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
    # Protocols whose reference code preprocesses differently from ``preprocess`` (e.g. Pixio's k-NN:
    # Resize 256 + CenterCrop 256 where its other evaluations squash): protocol name → Preprocess.
    protocol_preprocess: Mapping[str, Preprocess] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.size

    def preprocess_for(self, protocol: str) -> Preprocess:
        """The family's preprocessing for ``protocol``: a transform is a property of (family, protocol)."""
        return self.protocol_preprocess.get(protocol, self.preprocess)

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
# Data
# ---------------------------------------------------------------------------------------
DataKind = Literal["real", "mini"]


@dataclass(frozen=True)
class DataSource:
    """What a run reads, asked once by the runner: a folder, a mini world, or a simulator.

    ``kind`` separates leaderboards (real numbers never mix with mini-world ones); ``identity`` is
    a sha256 of what the data *is* (file contents for folders and mini worlds; package versions,
    seeds and the demonstration manifest for a simulator), so that two runs share a cell only if
    they read the same data. ``details`` is extra provenance for the record.
    """

    kind: DataKind
    dataset: str
    root: Path | None
    identity: str
    world: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        out = {"source": self.kind, "dataset": self.dataset, "root": str(self.root) if self.root else None,
               "identity": self.identity, **dict(self.details)}
        if self.world:
            out["world"] = self.world
        return out


# ---------------------------------------------------------------------------------------
# Task and protocols
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    split: str
    higher_is_better: bool
    primary: bool = False
    std: float | None = None
    definition: str | None = None  # where conventions differ between references (silog, mIoU over absent classes)


@dataclass
class TaskOutput:
    metrics: list[Metric]
    selected: dict[str, Any] = field(default_factory=dict)
    # Per-sample scores of a metric on its report split, in dataset order, in the metric's units, so
    # that the metric is their mean (top-1: 100 or 0 per image, averaged over probe seeds). Two runs
    # on the same data can then be compared pairwise (``evalsuite compare`` bootstraps the delta).
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    # A dataset-level metric (mIoU: summed intersections over summed unions) is no mean of per-image
    # scores; its per-image sufficient statistics let `compare` bootstrap it over images instead
    # (``{"statistic": "segmentation-miou", ...}``, see `SegmentationMeter.dataset_samples`).
    dataset_samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Files a run produces besides its numbers (e.g. VQA test-dev answers for the evaluation server):
    # name → text, written beside the record in ``<record stem>.artifacts/<name>``.
    artifacts: dict[str, str] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a protocol needs besides the backbone: the data, where to compute, the seed. Everything
    here except ``data`` and ``seed`` comes from `RunSettings`: recorded, never part of a cell's identity."""

    data: DataSource
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    batch_size: int = 64  # feature extraction and inference
    num_workers: int = 0
    work_dir: Path | None = None  # scratch space of training protocols (checkpoints to resume a killed run)
    checkpoint_interval: int = 0  # training iterations between work-dir checkpoints (0: at the end)
    progress: Any = None  # rich Progress-like; None = silent

    @property
    def data_root(self) -> Path:
        if self.data.root is None:
            raise ValueError(f"{self.data.dataset} has no data folder (a simulator)")
        return self.data.root

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


Runner = Callable[["Backbone", "TaskConfig", RunContext], TaskOutput]


@dataclass(frozen=True)
class Protocol:
    """One registered way of scoring a backbone on a task.

    ``params`` is a `Params` dataclass (every default visible); ``mini`` overrides it on the mini
    world. ``components`` name parameters whose value picks a registered component with parameters
    of its own (``head`` → the `HEADS` registry); ``component_defaults`` are this protocol's defaults
    per component choice (``{"head": {"dpt": {"lr": 1e-4}}}``). ``variant_keys`` make separate
    leaderboard columns (``nyuv2/pixio/dpt`` vs ``nyuv2/pixio/linear``).
    """

    name: str
    params: type[Params]
    run: Runner
    primary_metric: str
    higher_is_better: bool
    selection_split: str
    report_split: str
    description: str = ""
    mini: Mapping[str, Any] = field(default_factory=dict)
    components: Mapping[str, "Registry"] = field(default_factory=dict)
    component_defaults: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    variant_keys: tuple[str, ...] = ()
    leaderboard_metrics: tuple[str, ...] = ()


class Task:
    """A task = its data plus a table of protocols; register protocols with `Task.protocol`.

    Bump ``version`` on any change that can move a score of any of its protocols. The default data
    source is a folder (real) or a generated mini world; a task whose data is a simulator overrides
    `data_source`.
    """

    def __init__(self, name: str, *, version: int, family: str, dataset: str, tolerance: float,
                 mini_dataset: str | None = None, description: str = "",
                 quickstart: tuple[Mapping[str, Any], ...] = (), requires: Mapping[str, str] | None = None,
                 commands: Mapping[str, Callable] | None = None):
        self.name, self.version, self.family, self.dataset = name, version, family, dataset
        self.tolerance, self.mini_dataset, self.description = tolerance, mini_dataset, description
        # {importable module: the pyproject extra that installs it ("core" for a core dependency)}
        self.requires = dict(requires or {})
        self.quickstart = quickstart  # the variants `evalsuite quickstart` runs (protocol + params)
        # the family's own CLI commands, by verb: {"score": fn} is `evalsuite score <task>` (fn: a typer command)
        self.commands = dict(commands or {})
        self.protocols: dict[str, Protocol] = {}

    def protocol(self, name: str, params: type[Params], **spec: Any) -> Callable[[Runner], Runner]:
        """Decorator: register ``fn(backbone, config, ctx) -> TaskOutput`` as protocol ``name``."""

        def decorator(fn: Runner) -> Runner:
            if name in self.protocols:
                raise ValueError(f"task {self.name!r} already has a protocol {name!r}")
            self.protocols[name] = Protocol(name=name, params=params, run=fn, **spec)
            return fn

        return decorator

    def check_source(self, config: "TaskConfig", source: DataSource) -> None:
        """Refuse (`ParamError`) a parameter choice that this data source cannot honour, before any work:
        a number must never carry a label (a dataset, a variant) of data it was not computed on."""

    def missing_extra(self) -> str | None:
        """Why this task cannot run in this installation (a module of ``requires`` absent), or None.
        Checked without importing anything (`importlib.util.find_spec`)."""
        import importlib.util

        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if not missing:
            return None
        extras = sorted({self.requires[m] for m in missing})
        how = ("reinstall evalsuite: they are core dependencies" if extras == ["core"]
               else f"pip install 'evalsuite[{','.join(e for e in extras if e != 'core')}]'")
        return f"{self.name} needs {', '.join(missing)}: {how}"

    @property
    def default_protocol(self) -> str:
        return next(iter(self.protocols))

    def get_protocol(self, name: str | None) -> Protocol:
        name = name or self.default_protocol
        if name not in self.protocols:
            known = list(self.protocols)
            raise ParamError(f"task {self.name!r} has no protocol {name!r}.{suggest(name, known)} "
                             f"Protocols: {', '.join(known)}")
        return self.protocols[name]

    def resolve(self, overrides: Mapping[str, Any] | None = None, *, protocol: str | None = None,
                mini: bool = False) -> "TaskConfig":
        """The fully resolved configuration of one protocol: field defaults < this protocol's defaults
        for the chosen component < mini-world overrides < ``overrides`` (CLI strings are coerced).
        ``overrides`` may also carry ``protocol``."""
        overrides = dict(overrides or {})
        proto = self.get_protocol(overrides.pop("protocol", None) or protocol)
        mini_values = dict(proto.mini) if mini else {}
        own = set(proto.params.field_names())
        chosen: dict[str, Any] = {}
        component_params: dict[str, type[Params]] = {}
        for key, registry in proto.components.items():
            value = overrides.get(key, mini_values.get(key, _field_default(proto.params, key)))
            chosen[key] = value
            component_params[key] = registry.get(value).params
        inapplicable = _inapplicable_keys(proto, overrides, own, component_params)
        if inapplicable:
            raise ParamError(inapplicable)
        defaults: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key, value in chosen.items():
            preset = proto.component_defaults.get(key, {}).get(value, {})
            defaults.update(preset)
            sources.update({k: f"{key} {value} preset" for k in preset})
        sources.update({k: "mini preset" for k in mini_values})
        sources.update({k: "-p" for k in overrides})
        layered = {**defaults, **mini_values, **overrides}
        params = proto.params.build({k: v for k, v in layered.items() if k in own}, owner=f"{self.name}/{proto.name}")
        components = {}
        for key, cls in component_params.items():
            names = set(cls.field_names())
            components[key] = cls.build({k: v for k, v in layered.items() if k in names and k not in own},
                                        owner=f"{key} {chosen[key]!r}")
        return TaskConfig(task=self, protocol=proto, params=params, components=components, mini=mini, sources=sources)

    def data_source(self, data: str, data_root: str | Path | None, mini_size: str, mini_seed: int,
                    config: TaskConfig) -> DataSource | None:
        """The data a cell of ``config`` reads, for a task whose data depends on its parameters (which
        dataset, which simulated tasks); None (the default) lets the runner read the task's folder
        (real) or generate its mini world (``mini_dataset``)."""
        return None

    def __repr__(self) -> str:
        return f"Task({self.name!r}, protocols={list(self.protocols)})"


def _field_default(cls: type[Params], key: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == key)


def _inapplicable_keys(proto: Protocol, overrides: Mapping[str, Any], own: set[str],
                       component_params: Mapping[str, type[Params]]) -> str | None:
    """An error message for the first override that neither the protocol nor its chosen components take."""
    taken = own.union(*(set(c.field_names()) for c in component_params.values()))
    for key in overrides:
        if key in taken:
            continue
        for comp, registry in proto.components.items():
            owners = [n for n in registry.names() if key in registry.get(n).params.field_names()]
            if owners:
                return f"{key} applies to {comp} {'|'.join(owners)} only, not {comp} {overrides.get(comp, 'default')!r}"
        return (f"protocol {proto.name!r} has no parameter {key!r}.{suggest(key, sorted(taken))} "
                f"Known: {', '.join(sorted(taken))}")
    return None


@dataclass(frozen=True)
class TaskConfig:
    """One protocol of one task with every parameter resolved: what a cell runs and records."""

    task: Task
    protocol: Protocol
    params: Params
    components: Mapping[str, Params]
    mini: bool = False
    # where each value that is not its field's default came from: "<component> <choice> preset",
    # "mini preset" or "-p" (given: -p, a sweep's -p, a cell file); `evalsuite show` prints it
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def source(self, key: str) -> str:
        return self.sources.get(key, "field default")

    # what the runner, records and leaderboards read
    @property
    def name(self) -> str:
        return self.task.name

    @property
    def version(self) -> int:
        return self.task.version

    @property
    def primary_metric(self) -> str:
        return self.protocol.primary_metric

    @property
    def higher_is_better(self) -> bool:
        return self.protocol.higher_is_better

    @property
    def p(self):
        return self.params

    def values(self) -> dict[str, Any]:
        """Every parameter that ran, the components' included (their names never collide)."""
        out = self.params.to_dict()
        for params in self.components.values():
            out.update(params.to_dict())
        return out

    def identity(self) -> dict[str, Any]:
        """What moves a score: the protocol and its non-operational parameters (components' included)."""
        out = {"protocol": self.protocol.name, **self.params.identity()}
        for params in self.components.values():
            out.update(params.identity())
        return out

    def variant(self) -> dict[str, Any]:
        """The score-affecting values that differ from what this protocol runs by default on this kind
        of data (field defaults < the chosen component's preset < the mini preset): the part of a cell's
        identity that its label does not already name. Empty for the default experiment."""
        values = self.values()
        choices = {key: values[key] for key in self.protocol.components}
        preset = self.task.resolve(choices, protocol=self.protocol.name, mini=self.mini).identity()
        default = self.task.resolve({}, protocol=self.protocol.name, mini=self.mini).values()
        named = set(self.protocol.variant_keys)  # already in the label (``…/scratch/shuffled``)
        out = {k: v for k, v in self.identity().items() if preset.get(k) != v and k not in named}
        for key, value in choices.items():
            if key not in named and value != default[key]:
                out[key] = value
        return out

    @property
    def label(self) -> str:
        """Leaderboard column: task / protocol / variant values (``nyuv2/pixio/linear``)."""
        values = self.values()
        return "/".join([self.task.name, self.protocol.name, *(str(values[k]) for k in self.protocol.variant_keys)])

    def record(self, processes: int = 1) -> dict[str, Any]:
        """The record's ``task`` entry; ``processes`` above 1 enters the identity (see `cell_identity`)."""
        extra = {"processes": processes} if processes > 1 else {}
        return {
            "name": self.task.name, "label": self.label, "identity": {**self.identity(), **extra},
            "variant": {**self.variant(), **extra}, "version": self.task.version, "family": self.task.family,
            "protocol": self.protocol.name, "params": self.values(),
            "primary_metric": self.protocol.primary_metric, "higher_is_better": self.protocol.higher_is_better,
            "tolerance": self.task.tolerance, "selection_split": self.protocol.selection_split,
            "report_split": self.protocol.report_split, "leaderboard_metrics": list(self.protocol.leaderboard_metrics),
        }
