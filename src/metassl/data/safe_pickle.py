"""Loading data-set pickles without running arbitrary code.

Several community data-set formats (CIFAR python batches, learn2learn's and MetaOptNet's miniImageNet caches) are
pickles. A plain `pickle.load` of a downloaded file can run any function the file names; `load_pickle` refuses every
global except numpy's array/dtype/scalar reconstruction and a few inert builtins, and raises `UnsafePickleError`
naming the file and the refused global.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

__all__ = ["load_pickle", "UnsafePickleError", "ALLOWED_GLOBALS"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle references a global that the restricted loader does not allow."""


def _numpy_core(name: str) -> Any:
    import numpy as np

    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return {
        "_reconstruct": multiarray._reconstruct,
        "scalar": multiarray.scalar,
        "_frombuffer": numeric._frombuffer,
        "ndarray": np.ndarray,
        "dtype": np.dtype,
    }[name]


# (module, name) pairs a pickle may reference. Pickles written by numpy 1.x name `numpy.core.*`, by numpy 2.x
# `numpy._core.*`; both resolve to whichever the installed numpy provides.
_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
_BUILTINS = {
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex, ("builtins", "slice"): slice, ("builtins", "range"): range,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset, ("__builtin__", "bytearray"): bytearray,
    ("__builtin__", "complex"): complex,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # protocol-2 pickles written by Python 3 encode bytes objects as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): None,
}
ALLOWED_GLOBALS = frozenset(_NUMPY) | frozenset(_BUILTINS)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], label: str, **kw: Any) -> None:
        super().__init__(file, **kw)
        self._label = label

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY:
            return _numpy_core(name)
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        if (module, name) in _BUILTINS:
            return _BUILTINS[(module, name)]
        raise UnsafePickleError(
            f"refusing to load {self._label}: the pickle references {module}.{name}, which is not a numpy array, "
            f"dtype or plain container. Data-set pickles only need numpy arrays, lists, dicts, strings and numbers; "
            f"this file may be corrupt or malicious. Re-download it from the data set's official source.")


def load_pickle(source: str | os.PathLike | IO[bytes] | bytes, encoding: str = "ASCII", errors: str = "strict") -> Any:
    """Unpickle `source` (a path, an open binary file or bytes), allowing only numpy arrays and plain containers.

    `encoding` is passed to the unpickler: use "bytes" for the official CIFAR batches (keys stay bytes), "latin1"
    for Python 2 pickles holding numpy arrays (e.g. MetaOptNet's). Raises `UnsafePickleError` for any other global.
    """
    if isinstance(source, (bytes, bytearray)):
        return _RestrictedUnpickler(io.BytesIO(source), "<bytes>", encoding=encoding, errors=errors).load()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with open(path, "rb") as f:
            try:
                return _RestrictedUnpickler(f, str(path), encoding=encoding, errors=errors).load()
            except UnsafePickleError:
                raise
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
                raise pickle.UnpicklingError(f"cannot unpickle {path}: {type(e).__name__}: {e}. The file may be "
                                             f"truncated or corrupt; re-download it.") from e
    label = getattr(source, "name", None) or "<file object>"
    return _RestrictedUnpickler(source, str(label), encoding=encoding, errors=errors).load()
