"""Typed, validated parameters: one dataclass per protocol (and per head), every default visible.

A field is declared with `param` (default, help, range, choices). Every field can move a score, so
every field is part of a cell's identity; what cannot (a checkpoint interval, a batch size for
extraction) lives in `evalsuite.cell.RunSettings`, never here. Values given on the
command line arrive as strings and are coerced to the field's type here, in one place, so ``-p``
and ``--objective`` mean the same thing; an unknown key is an error that suggests the closest
name, and a value outside its range is refused before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

P = TypeVar("P", bound="Params")


def param(default: Any, help: str = "", *, min: float | None = None, max: float | None = None,
          min_exclusive: bool = False, max_exclusive: bool = False, choices: tuple | None = None,
          increasing: bool = False) -> Any:
    """A parameter field: ``min``/``max`` bound numbers (and every element of a tuple), ``choices``
    restricts the value, ``increasing`` demands a strictly increasing tuple (a schedule's milestones)."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive, "max_exclusive": max_exclusive,
            "choices": choices, "increasing": increasing}
    if isinstance(default, (list, dict, set)):
        raise TypeError("parameter defaults must be immutable (use a tuple)")
    return field(default=default, metadata=meta)


class ParamError(ValueError):
    """A parameter that does not exist, does not apply, or has a value outside its range."""


def parse_assignments(items: list[str] | tuple[str, ...], option: str = "-p") -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}``: the one KEY=VALUE parser of the CLI."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamError(f"{option} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def coerce(value: Any, kind: Any, key: str) -> Any:
    """``value`` (a string from the command line, or a Python value) as an instance of ``kind``."""
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", ""} and type(None) in typing.get_args(kind)):
            return None
        return coerce(value, options[0], key)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        if Ellipsis not in typing.get_args(kind) and len(args) != len(items):
            raise ParamError(f"{key}={_show(value)} needs {len(args)} comma-separated values")
        element = args[0] if args else str
        return tuple(coerce(v.strip() if isinstance(v, str) else v, element if Ellipsis in typing.get_args(kind)
                            else args[i], key) for i, v in enumerate(items))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes"}:
            return True
        if isinstance(value, str) and value.lower() in {"0", "false", "no"}:
            return False
        raise ParamError(f"{key}={_show(value)} is not a boolean (true/false)")
    if kind is float:
        if isinstance(value, bool):
            raise ParamError(f"{key}={_show(value)} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ParamError(f"{key}={_show(value)} is not a number") from None
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ParamError(f"{key}={_show(value)} is not an integer")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip())
        except (TypeError, ValueError):
            raise ParamError(f"{key}={_show(value)} is not an integer") from None
    if kind is str:
        return str(value)
    if kind is Any:
        return value
    raise TypeError(f"parameter {key}: unsupported type {kind!r}")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Params:
    """Base of every parameter dataclass. Subclasses declare fields with `param` and may override
    `check` for constraints between fields."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_range(f, getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Constraints between fields; raise `ParamError`."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def build(cls: type[P], values: Mapping[str, Any] | None = None, owner: str = "") -> P:
        """Defaults updated with ``values`` (strings are coerced); unknown keys are an error."""
        values = dict(values or {})
        known = cls.field_names()
        unknown = [k for k in values if k not in known]
        if unknown:
            where = f"{owner} " if owner else ""
            raise ParamError(f"{where}has no parameter {unknown[0]!r}.{suggest(unknown[0], known)} "
                             f"Known: {', '.join(known)}")
        types = cls.types()
        return cls(**{k: coerce(v, types[k], k) for k, v in values.items()})

    def replace(self: P, **values: Any) -> P:
        return dataclasses.replace(self, **{k: coerce(v, self.types()[k], k) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def identity(self) -> dict[str, Any]:
        """The values that can move a score: all of them."""
        return self.to_dict()

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One row per field (name, type, default, help, range/choices) for `evalsuite show`."""
        types = cls.types()
        rows = []
        for f in dataclasses.fields(cls):
            m = f.metadata
            rows.append({"name": f.name, "type": _type_name(types[f.name]), "default": f.default, "help": m.get("help", ""),
                         "range": _range_text(m)})
        return rows


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _range_text(meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "|".join(map(str, meta["choices"]))
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return ""
    left = "" if lo is None else f"{lo} {'<' if meta.get('min_exclusive') else '≤'} "
    right = "" if hi is None else f" {'<' if meta.get('max_exclusive') else '≤'} {hi}"
    return f"{left}x{right}"


def _check_range(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ParamError(f"{f.name}={_show(value)} is not one of {'|'.join(map(str, choices))}")
    if meta.get("increasing") and isinstance(value, tuple) and any(b <= a for a, b in zip(value, value[1:])):
        raise ParamError(f"{f.name}={_show(value)} must be strictly increasing (a schedule's milestones, in order)")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return
    for v in (value if isinstance(value, tuple) else (value,)):
        if not isinstance(v, (int, float)):
            continue
        if lo is not None and (v < lo or (meta.get("min_exclusive") and v == lo)):
            raise ParamError(f"{f.name}={_show(value)} is out of range: needs {_range_text(meta)}")
        if hi is not None and (v > hi or (meta.get("max_exclusive") and v == hi)):
            raise ParamError(f"{f.name}={_show(value)} is out of range: needs {_range_text(meta)}")


def keyword_overrides(fn: Callable, overrides: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """``overrides`` checked against ``fn``'s keyword parameters and coerced by `coerce` to the type of
    each default (for objectives, whose options are constructor keywords rather than a `Params`
    class): the same grammar and the same refusals as ``-p`` (``k=1e3`` for an int is no integer)."""
    signature = inspect.signature(fn)
    accepted = {name: p for name, p in signature.parameters.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty}
    out = {}
    for key, value in overrides.items():
        if key not in accepted:
            raise ParamError(f"{owner} has no option {key!r}.{suggest(key, list(accepted))} "
                             f"Known: {', '.join(sorted(accepted))}")
        default = accepted[key].default
        out[key] = value if default is None else coerce(value, _kind_of(default), key)
    return out


def _kind_of(default: Any) -> Any:
    """The type a keyword's default stands for: ``(1, 2)`` is ``tuple[int, ...]``."""
    if isinstance(default, tuple):
        return tuple[_kind_of(default[0]) if default else str, ...]  # type: ignore[misc]
    return type(default) if isinstance(default, (bool, int, float, str)) else Any
