"""One generic registry for backbones, tasks, heads and mini datasets.

Entries come from three places, all resolved lazily so that `evalsuite --help`
imports nothing heavy:

* ``@REGISTRY.register("name")`` in a module of a *discovery package*
  (``backbones``, ``tasks``): the package's modules are imported the first time
  the registry is queried;
* ``REGISTRY.register_lazy("name", "module:attr")``: imported on first ``get``;
* Python entry points (``[project.entry-points."evalsuite.backbones"]``): an
  installed third-party package adds ``name = "pkg.module:factory"`` and the
  factory is imported only when that name is used.

A discovery package carries ``registry-index.json`` (name → the module that registers it,
and open prefixes such as ``timm:``), so that names are listed, completed and refused
(``pixio-h61``: did you mean ``pixio-h16``?) without importing a model module or torch;
using a name imports its module only. ``python -m evalsuite.registry`` rewrites the
indexes and a test keeps them equal to what the modules register.
"""

from __future__ import annotations

import difflib
import importlib
import json
import pkgutil
from importlib.metadata import entry_points
from importlib.resources import files
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, discover: tuple[str, ...] = (), entry_point_group: str | None = None,
                 listing: str | None = None):
        self.kind = kind
        self.listing = listing or f"{kind}s"  # `evalsuite list <listing>`
        self._discover = discover
        self._group = entry_point_group
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._prefixes: dict[str, Any] = {}
        self._indexed: dict[str, str] = {}  # name or prefix → module (from the packages' indexes)
        self._named = False
        self._discovered = False

    # -- registration -------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; used bare or as a decorator."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(fn: T) -> T:
            self._add(name, fn)
            return fn

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"module:attr"``, imported only when ``name`` is first used."""
        if ":" not in target:
            raise ValueError(f"lazy {self.kind} target must be 'module:attr', got {target!r}")
        if name in self._entries or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._lazy[name] = target

    def register_prefix(self, prefix: str, resolve: Any) -> None:
        """Names ``prefix<rest>`` are built on first use by ``resolve(rest)`` (``timm:<model>``): an
        open family whose members are not listed."""
        self._prefixes[prefix] = resolve

    def _add(self, name: str, obj: T) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._lazy.pop(name, None)
        self._entries[name] = obj

    # -- lookup -------------------------------------------------------------------------
    def _ensure_named(self) -> None:
        """Every name, from the indexes and entry points: nothing is imported."""
        if self._named:
            return
        self._named = True
        for package_name in self._discover:
            index = _read_index(package_name).get(self.kind)
            if index is None:  # a package without an index: import it all
                self._ensure_discovered()
                continue
            self._indexed.update(index)
        if self._group:
            for ep in entry_points(group=self._group):
                if ep.name not in self._entries and ep.name not in self._lazy:
                    self._lazy[ep.name] = ep.value

    def _ensure_discovered(self) -> None:
        """Import every module of the discovery packages (what the indexes are written from)."""
        if self._discovered:
            return
        self._discovered = True
        for package_name in self._discover:
            for module in discover_modules(package_name):
                importlib.import_module(module)
        self._ensure_named()

    def _indexed_names(self) -> set[str]:
        return {n for n in self._indexed if not n.endswith(":")}

    def names(self) -> list[str]:
        self._ensure_named()
        return sorted({*self._entries, *self._lazy, *self._indexed_names()})

    def __contains__(self, name: str) -> bool:
        self._ensure_named()
        return (name in self._entries or name in self._lazy or name in self._indexed_names()
                or any(name.startswith(p) for p in [*self._prefixes, *(k for k in self._indexed if k.endswith(":"))]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        self._ensure_named()
        module = self._indexed.get(name) or next((m for p, m in self._indexed.items() if p.endswith(":")
                                                  and name.startswith(p)), None)
        if name not in self._entries and module is not None:
            importlib.import_module(module)  # registers its entries (and prefixes)
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            module_name, _, attr = self._lazy[name].partition(":")
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._add(name, obj)  # type: ignore[arg-type]
            return obj  # type: ignore[return-value]
        for prefix, resolve in self._prefixes.items():
            if name.startswith(prefix):
                obj = resolve(name.removeprefix(prefix))
                self._add(name, obj)
                return obj
        raise UnknownNameError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Run `evalsuite list {self.listing}` to see all."


INDEX_FILE = "registry-index.json"


def discover_modules(package_name: str) -> list[str]:
    package = importlib.import_module(package_name)
    return [f"{package_name}.{info.name}" for info in pkgutil.iter_modules(getattr(package, "__path__", []))
            if not info.name.startswith("_")]


def _read_index(package_name: str) -> dict[str, dict[str, str]]:
    """``{kind: {name or prefix: module}}`` of a discovery package ({} without an index file).
    Read as a resource, without importing the package's modules."""
    try:
        text = files(package_name).joinpath(INDEX_FILE).read_text()
    except (FileNotFoundError, ModuleNotFoundError, TypeError):  # TypeError: a module, not a package
        return {}
    return json.loads(text)


def build_index(package_name: str, registries: list["Registry"]) -> dict[str, dict[str, str]]:
    """What each module of ``package_name`` registers, module by module (in a fresh process: a module
    imported before would register nothing new)."""
    out: dict[str, dict[str, str]] = {r.kind: {} for r in registries if package_name in r._discover}
    for module in discover_modules(package_name):
        before = {r.kind: ({*r._entries}, {*r._prefixes}) for r in registries}
        importlib.import_module(module)
        for r in registries:
            if r.kind not in out:
                continue
            names, prefixes = before[r.kind]
            out[r.kind].update({n: module for n in r._entries.keys() - names})
            out[r.kind].update({p: module for p in r._prefixes.keys() - prefixes})
    return {kind: dict(sorted(entries.items())) for kind, entries in out.items()}


BACKBONES: Registry[Any] = Registry("backbone", ("backbones",), "evalsuite.backbones")  # BackboneSpec or factory
TASKS: Registry[Any] = Registry("task", ("tasks",), "evalsuite.tasks")  # contracts.Task
HEADS: Registry[Any] = Registry("head", ("tasks",))  # tasks.dense.HeadSpec
TEXT_ENCODERS: Registry[Any] = Registry("text encoder", ("evalsuite.text",), "evalsuite.text_encoders",
                                        listing="text-encoders")  # text.TextEncoderSpec
MINI_DATASETS: Registry[Any] = Registry("mini dataset", ("evalsuite.mini",), listing="mini")


def write_indexes() -> list[str]:
    """Rewrite every discovery package's index from what its modules register."""
    registries = [BACKBONES, TASKS, HEADS]
    written = []
    for package_name in sorted({p for r in registries for p in r._discover}):
        index = build_index(package_name, registries)
        path = files(package_name).joinpath(INDEX_FILE)
        path.write_text(json.dumps(index, indent=1) + "\n")  # type: ignore[attr-defined]
        written.append(str(path))
    return written


if __name__ == "__main__":  # through the imported module: the one the model modules register with
    from evalsuite.registry import write_indexes as write

    print("\n".join(write()))
