"""Backbone construction and strict checkpoint loading.

Weights are read with safetensors or ``torch.load(weights_only=True)`` (a pickle that needs
code execution is refused), mapped by the family's own converter, and loaded strictly: any
missing, unexpected or mis-shaped key raises an error naming it. The only keys a converter may
drop are the ones it lists explicitly (e.g. the pretraining decoder).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from .contracts import Backbone, count_parameters
from .data import file_sha256
from .registry import BACKBONES

StateDict = Mapping[str, torch.Tensor]


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and where its official weights come from.

    ``convert`` maps any supported checkpoint layout (official, Hugging Face, ours) onto the
    module's keys; ``ignore`` lists regexes of checkpoint keys that are deliberately dropped.
    """

    name: str
    family: str
    build: Callable[[], Backbone]
    convert: Callable[[dict], dict] = lambda sd: sd
    ignore: tuple[str, ...] = ()
    weights_file: str | None = None
    hf_repo: str | None = None
    random_by_default: bool = False
    pretrain: Callable[..., torch.nn.Module] | None = None  # (encoder, **overrides) -> objective module
    # A family whose checkpoints carry a text side (Pixel-BERT): path -> (TextEncoder, VisualEmbedding)
    paired_text: Callable[[Path], tuple] | None = None

    def num_params(self) -> int:
        return count_parameters(self.build)


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES.register(spec.name, spec)
    return spec


def weights_dir() -> Path:
    return Path(os.environ.get("EVALSUITE_WEIGHTS_DIR", Path.home() / ".cache" / "evalsuite" / "weights"))


UNREADABLE = ("{path} is not a checkpoint evalsuite can read safely ({why}): a torch file of tensors (loaded with "
              "weights_only=True, which never runs code) or .safetensors; a file that needs code execution must be "
              "converted by its owner")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch file; a damaged, empty or unsafe file is one line."""
    path = check_weights_file(Path(path))
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:  # truncated, random bytes, bad header
            raise CheckpointError(UNREADABLE.format(path=path, why=f"damaged safetensors: {exc}")) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, truncated zip, … (torch's text suggests unsafe loading: not ours)
        raise CheckpointError(UNREADABLE.format(path=path, why=type(exc).__name__)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def check_weights_file(path: Path) -> Path:
    """A regular, non-empty file (``/dev/null`` exists, but is no checkpoint)."""
    if not path.exists():
        raise CheckpointError(f"--weights {path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"--weights {path} is a directory: give the checkpoint file (.pth, .pt or .safetensors)")
    if not path.is_file():
        raise CheckpointError(f"--weights {path} is not a regular file (a device or pipe), so not a checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"--weights {path} is empty, not a checkpoint")
    return path


def check_finite(state: StateDict, source: str) -> None:
    """Refuse a checkpoint with NaN or inf in any floating tensor: it would evaluate to a confident
    chance-level number (a NaN norm weight zeroes nothing, it poisons every feature after it)."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: non-finite values (NaN/inf) in {_short(sorted(bad))}: a damaged or diverged "
                              "checkpoint, refused")


def load_strict(model: torch.nn.Module, state: StateDict, ignore: Iterable[str] = (), source: str = "checkpoint") -> dict:
    """Load ``state`` into ``model`` demanding an exact key, shape and dtype-class match (a floating
    parameter takes floating values: an integer or boolean tensor is refused; float16/bfloat16 into
    float32 is converted). Returns the checkpoint's dtypes of floating parameters (for the record)."""
    patterns = [re.compile(p) for p in ignore]
    state = {k: v for k, v in state.items() if not any(p.fullmatch(k) for p in patterns)}
    not_tensors = sorted(f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{source}: values that are not tensors {_short(not_tensors)}")
    check_finite(state, source)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    wrong_dtype = sorted(
        f"{k}: checkpoint {state[k].dtype} vs model {expected[k].dtype}"
        for k in set(state) & set(expected)
        if state[k].dtype.is_floating_point != expected[k].dtype.is_floating_point
        or state[k].dtype.is_complex != expected[k].dtype.is_complex
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes {_short(wrong_shape)}")
    if wrong_dtype:
        problems.append(f"wrong dtypes {_short(wrong_dtype)}")
    if problems:
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return dict(Counter(str(v.dtype).removeprefix("torch.") for v in state.values() if v.dtype.is_floating_point))


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', … (+{len(items) - limit} more)' if len(items) > limit else ''}]"


def resolve_weights(spec: BackboneSpec, weights: str | None) -> Path | None:
    """The checkpoint file to load, ``None`` for random init, or an error saying where to put it."""
    if weights == "random" or (weights is None and spec.random_by_default):
        return None
    if weights is None:
        candidate = weights_dir() / spec.weights_file if spec.weights_file else None
        if candidate is not None and candidate.is_file():
            return candidate
        where = (f"put {spec.weights_file} in {weights_dir()} (or set EVALSUITE_WEIGHTS_DIR)" if spec.weights_file
                 else "no official file is known")
        hub = f", --weights hf-hub:{spec.hf_repo}" if spec.hf_repo else ""
        raise CheckpointError(f"{spec.name}: no weights found: {where}, or pass --weights PATH{hub} or --weights random")
    if weights.startswith("hf-hub:"):
        return _download_hub(weights.removeprefix("hf-hub:"))
    return check_weights_file(Path(weights).expanduser())


def _download_hub(repo: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise CheckpointError("hf-hub weights need the 'hub' extra: pip install 'evalsuite[hub]'") from exc
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, filename))
        except Exception as exc:
            last = exc
    raise CheckpointError(f"could not fetch weights of {repo} from the hub: {last}")


def create_backbone(name: str, weights: str | None = None) -> Backbone:
    """Build a registered backbone and load its weights strictly (``"random"`` for none)."""
    spec = BACKBONES.get(name)
    if not isinstance(spec, BackboneSpec):  # an entry-point plugin may register a bare factory
        return spec(weights=weights)
    return build_backbone(spec, weights)


def build_backbone(spec: BackboneSpec, weights: str | None = None) -> Backbone:
    path = resolve_weights(spec, weights)
    model = spec.build()
    if path is not None:
        state = spec.convert(read_state_dict(path))
        dtypes = load_strict(model, state, spec.ignore, source=str(path))
        model.meta = dataclasses.replace(model.meta, weights=file_sha256(path))
        model.checkpoint_dtypes = dtypes
    model.checkpoint_path = path
    model.eval()
    return model


def paired_text(backbone: Backbone) -> tuple:
    """(TextEncoder, VisualEmbedding) stored with the backbone's checkpoint (Pixel-BERT pretraining),
    or one line saying why there is none."""
    spec = BACKBONES.get(backbone.meta.name)
    if not isinstance(spec, BackboneSpec) or spec.paired_text is None:
        raise CheckpointError(f"{backbone.meta.name}: the {backbone.meta.family} family has no text side in its "
                              "checkpoints; use text=scratch or text=bert-local")
    path = getattr(backbone, "checkpoint_path", None)
    if path is None:
        raise CheckpointError(f"{backbone.meta.name} has random weights: text=checkpoint needs its pretraining checkpoint "
                              "(--weights PATH from `evalsuite pretrain`)")
    return spec.paired_text(Path(path))

