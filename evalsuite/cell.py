"""A cell as one value: `CellSpec` (what moves a score) and `RunSettings` (how it is computed).

Every command that runs cells (`run`, `sweep`, `quickstart`, the torchrun and Slurm executors)
builds a `CellSpec` with `CellSpec.build`, the one constructor and validator: names, parameters
(typed here, at the first hop: ``-p lr=3e-4`` leaves as a float), the data spec and the process
count are checked before any work. Its JSON form (`to_dict`/`from_dict`, ``evalsuite run --cell
FILE``) is what executors ship to other processes, so no command re-spells a cell as flags.
`RunSettings` holds what never moves a score: recorded, never part of the identity.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DATA_KINDS = ("real", "mini")
MINI_SIZES = ("small", "medium", "large")
DEFAULT_OUT = Path("results/runs")


class CellError(ValueError):
    """A cell that cannot run as specified (one actionable line)."""


@dataclass(frozen=True)
class DataSpec:
    """Which data a cell reads: a folder of real data (``root``, else the configured one) or a
    generated mini world (``mini_size``/``mini_seed``; a generated folder given as ``root`` is
    recognised as mini data by its manifest)."""

    kind: str = "real"
    root: str | None = None
    mini_size: str = "small"
    mini_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise CellError(f"data must be 'real' or 'mini', got {self.kind!r}")
        if self.kind == "mini" and self.root is not None:
            raise CellError("--data mini and --data-root exclude each other: a mini world is generated (pick it with "
                            "--mini-size/--mini-seed), a folder is read as --data real --data-root X")
        if self.mini_size not in MINI_SIZES:
            raise CellError(f"--mini-size must be one of {'|'.join(MINI_SIZES)}, got {self.mini_size!r}")
        if self.kind != "mini" and (self.mini_size != "small" or self.mini_seed != 0):
            raise CellError("--mini-size and --mini-seed pick a mini world: they need --data mini")
        if isinstance(self.mini_seed, bool) or not isinstance(self.mini_seed, int) or self.mini_seed < 0:
            raise CellError(f"--mini-seed must be a non-negative integer, got {self.mini_seed!r}")


@dataclass(frozen=True)
class CellSpec:
    """One experiment: backbone, weights, task, protocol, the parameters given (typed), data, seed
    and process count. Build it with `build`; its identity is the runner's `cell_key` of it."""

    backbone: str
    task: str
    protocol: str
    params: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    weights_label: str | None = None  # how leaderboards name the checkpoint (default: its sha256's first 8 digits)
    data: DataSpec = field(default_factory=DataSpec)
    seed: int = 0
    processes: int = 1  # a DDP run is another computation than a one-process run: above 1, part of the identity

    @classmethod
    def build(cls, backbone: str, task: str, *, protocol: str | None = None, params: Mapping[str, Any] | None = None,
              weights: str | None = None, weights_label: str | None = None, data: str = "real",
              data_root: str | Path | None = None, mini_size: str = "small", mini_seed: int = 0, seed: int = 0,
              processes: int = 1) -> "CellSpec":
        """Every refusal a cell can meet before it runs, in one place: the data spec, the names, the
        parameters (unknown, inapplicable, out of range, of the wrong type), the seed and processes."""
        from .registry import BACKBONES, TASKS

        data_spec = DataSpec(data, None if data_root is None else str(data_root), mini_size, mini_seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise CellError(f"--seed must be a non-negative integer, got {seed!r}")
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise CellError(f"processes must be a positive integer, got {processes!r}")
        if backbone not in BACKBONES:
            BACKBONES.get(backbone)  # raises with the closest names
        task_obj = TASKS.get(task)
        overrides = dict(params or {})
        protocol = overrides.pop("protocol", None) or protocol
        config = task_obj.resolve(overrides, protocol=protocol, mini=data == "mini")
        values = config.values()
        typed = {key: values[key] for key in overrides}
        return cls(backbone, task, config.protocol.name, typed, weights, weights_label, data_spec, seed, processes)

    def config(self, mini: bool | None = None):
        """The resolved `TaskConfig` (mini-world presets when the data is mini)."""
        from .registry import TASKS

        return TASKS.get(self.task).resolve(dict(self.params), protocol=self.protocol,
                                            mini=self.data.kind == "mini" if mini is None else mini)

    @property
    def name(self) -> str:
        """``backbone[@weights] × task/protocol · seed N`` for progress lines and summaries."""
        weights = f" @ {self.weights_label or self.weights}" if self.weights else ""
        given = " ".join(f"{k}={_text(v)}" for k, v in sorted(self.params.items()))
        return (f"{self.backbone}{weights} × {self.task}/{self.protocol}{' ' + given if given else ''} · seed {self.seed}"
                + (f" · {self.processes} processes" if self.processes > 1 else ""))

    def replace(self, **changes: Any) -> "CellSpec":
        """Another cell, built (and so validated) again from this one's fields with ``changes``."""
        return CellSpec.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["params"] = {k: _jsonable(v) for k, v in self.params.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CellSpec":
        """The JSON form read back through `build`: a hand-edited file meets every refusal `run` would."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or not {"backbone", "task"} <= set(data):
            raise CellError(f"not a cell: {'unknown fields ' + str(unknown) if unknown else 'needs backbone and task'}")
        spec = dict(data)
        data_spec = dict(spec.pop("data", None) or {})
        unknown_data = sorted(set(data_spec) - {f.name for f in dataclasses.fields(DataSpec)})
        if unknown_data:
            raise CellError(f"not a cell: unknown data fields {unknown_data}")
        return cls.build(spec.pop("backbone"), spec.pop("task"), data=data_spec.get("kind", "real"),
                         data_root=data_spec.get("root"), mini_size=data_spec.get("mini_size", "small"),
                         mini_seed=data_spec.get("mini_seed", 0), **spec)


@dataclass(frozen=True)
class RunSettings:
    """How a cell is computed, never what it is: changing one skips a finished cell and resumes a
    killed one from the same work dir."""

    out: Path = DEFAULT_OUT
    force: bool = False
    device: str | None = None  # default: cuda if available
    amp: bool | None = None  # bf16 autocast (default: on CUDA)
    batch_size: int = 64  # feature extraction and inference
    num_workers: int = 0
    checkpoint_interval: int = 0  # training iterations between work-dir checkpoints (0: at the end)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        for name, low in (("batch_size", 1), ("num_workers", 0), ("checkpoint_interval", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CellError(f"--{name.replace('_', '-')} must be an integer ≥ {low}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "out": str(self.out)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSettings":
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CellError(f"not run settings: unknown fields {unknown}")
        return cls(**data)


def write_cell_file(path: Path, spec: CellSpec, settings: RunSettings) -> Path:
    """The file an executor hands to ``evalsuite run --cell FILE`` in another process."""
    from .fileio import atomic_write_text

    atomic_write_text(path, json.dumps({"cell": spec.to_dict(), "settings": settings.to_dict()}, indent=1, sort_keys=True))
    return path


def read_cell_file(path: Path) -> tuple[CellSpec, RunSettings | None]:
    """A cell file's cell and (when it has them) settings, validated as `run` validates its flags."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CellError(f"no cell file at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CellError(f"{path}: not a cell file (not JSON: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cell"), dict):
        raise CellError(f"{path}: not a cell file (expected {{\"cell\": {{…}}, \"settings\": {{…}}}})")
    try:
        settings = RunSettings.from_dict(data["settings"]) if isinstance(data.get("settings"), dict) else None
        return CellSpec.from_dict(data["cell"]), settings
    except CellError as exc:
        raise CellError(f"{path}: {exc}") from None


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


def _text(value: Any) -> str:
    return ",".join(map(_text, value)) if isinstance(value, (list, tuple)) else str(value)
