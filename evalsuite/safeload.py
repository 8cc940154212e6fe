"""Reading files that other tools pickled, without running what the pickle asks for.

A pickle is a program: ``np.load`` with pickles allowed, or ``pickle.load``, on a file from a
dataset folder runs whatever callable the file names (``os.system`` included). Two formats in the
wild are pickles of plain data — MapAnything's scene lists (an object array of ``str``) and
CortexBench's expert demonstrations (lists and dicts of numpy arrays) — so they are read with an
unpickler that builds numpy arrays, dtypes and the builtin containers and refuses every other name,
before anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

# the names a pickle of numpy arrays needs (numpy 1.x and 2.x spell its core module differently)
NUMPY_NAMES = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
})


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a callable outside the allowed names; nothing it named was run."""


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only numpy arrays/dtypes/scalars and builtin containers; any other global is refused."""

    def __init__(self, file, source: str, allowed: frozenset = NUMPY_NAMES):
        super().__init__(file)
        self.source, self.allowed = source, allowed

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed or (module == "numpy" and name.startswith("dtype")):
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.source}: refused to unpickle {module}.{name} (this file may only hold numpy "
                                "arrays, lists, dicts and strings; nothing in it was run)")


def load_restricted_pickle(path: Path):
    """A pickle file of numpy arrays, lists, dicts, numbers and strings."""
    with open(path, "rb") as fh:
        return RestrictedUnpickler(fh, str(path)).load()


def load_string_array(path: Path) -> list[str]:
    """The strings of a 1-D ``.npy`` file: a unicode array (no pickle involved) or an object array of
    ``str`` (its pickle read by `RestrictedUnpickler`); anything else is refused in one line."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(fh)
        except (ValueError, OSError, SyntaxError) as exc:
            raise ValueError(f"{path} is not a .npy file ({exc})") from None
        if dtype.kind == "U":
            fh.seek(0)
            values = np.load(fh, allow_pickle=False)
        elif dtype.hasobject:
            try:
                values = RestrictedUnpickler(io.BytesIO(fh.read()), str(path)).load()
            except UnsafePickleError:
                raise
            except Exception as exc:  # truncated or damaged pickle
                raise ValueError(f"{path}: unreadable object array ({type(exc).__name__}: {exc})") from None
        else:
            raise ValueError(f"{path} holds a {dtype} array, not a list of names (strings)")
    values = np.asarray(values)
    if values.ndim != 1 or not all(isinstance(v, str) for v in values.tolist()):
        raise ValueError(f"{path} must be a 1-D array of strings (scene names), got shape {values.shape} of "
                         f"{sorted({type(v).__name__ for v in np.ravel(values).tolist()})}")
    return [str(v) for v in values.tolist()]
