"""Loading data-set pickles without running arbitrary code.

Several community data-set formats (CIFAR python batches, learn2learn's and MetaOptNet's miniImageNet caches) are
pickles. A plain `pickle.load` of a downloaded file can run any function the file names; `load_pickle` refuses every
global except numpy's array/dtype/scalar reconstruction and a few inert builtins, and raises `UnsafePickleError`
naming the file and the refused global. The allowed builtins that could allocate without bound from a few bytes
(`bytearray(10**12)`, `set(range(10**12))`) accept only the arguments pickle itself writes, so a memory bomb is
refused too. Every failure is a `ValueError` subclass naming the file (`PickleReadError`, `UnsafePickleError`), so
the command line prints one line, never a traceback.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

__all__ = ["load_pickle", "UnsafePickleError", "PickleReadError", "ALLOWED_GLOBALS"]


class PickleReadError(pickle.UnpicklingError, ValueError):
    """A pickle could not be read (truncated, corrupt, too large); the message names the file."""


class UnsafePickleError(PickleReadError):
    """A pickle references a global that the restricted loader does not allow (or calls an allowed one with
    arguments that would allocate without bound)."""


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
class _Refused(Exception):
    """An allowed builtin called with arguments pickle never writes (the loader turns it into UnsafePickleError)."""


def _containers(kind: type):
    """`kind(items)` for the list/tuple/set pickle writes; `set(range(10**12))` and other lazy iterables that
    expand a few bytes into gigabytes are refused."""
    def make(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset))):
            raise _Refused(f"calls {kind.__name__}(<{type(args[0]).__name__ if args else ''}>)")
        return kind(*args)
    make.__name__ = kind.__name__
    return make


def _bytearray(*args: Any) -> bytearray:
    """bytearray(bytes) or bytearray(str, encoding), as pickle writes; bytearray(10**12) would allocate a terabyte."""
    if not args or isinstance(args[0], (bytes, bytearray)) or (isinstance(args[0], str) and len(args) <= 3):
        return bytearray(*args)
    raise _Refused(f"calls bytearray(<{type(args[0]).__name__}>)")


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """codecs.encode as protocol-2 pickles use it (str -> bytes through latin1); other codecs are not data."""
    import codecs

    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise _Refused(f"calls _codecs.encode(..., {encoding!r})")
    return codecs.encode(text, encoding, errors)


_BUILTINS = {
    ("builtins", "set"): _containers(set), ("builtins", "frozenset"): _containers(frozenset),
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "complex"): complex, ("builtins", "slice"): slice, ("builtins", "range"): range,
    ("__builtin__", "set"): _containers(set), ("__builtin__", "frozenset"): _containers(frozenset),
    ("__builtin__", "bytearray"): _bytearray,
    ("__builtin__", "complex"): complex, ("__builtin__", "slice"): slice, ("__builtin__", "xrange"): range,
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
            return _latin1_encode
        if (module, name) in _BUILTINS:
            return _BUILTINS[(module, name)]
        raise UnsafePickleError(
            f"refusing to load {self._label}: the pickle references {module}.{name}, which is not a numpy array, "
            f"dtype or plain container. Data-set pickles only need numpy arrays, lists, dicts, strings and numbers; "
            f"this file may be corrupt or malicious. Re-download it from the data set's official source.")


def load_pickle(source: str | os.PathLike | IO[bytes] | bytes, encoding: str = "ASCII", errors: str = "strict") -> Any:
    """Unpickle `source` (a path, an open binary file or bytes), allowing only numpy arrays and plain containers.

    `encoding` is passed to the unpickler: use "bytes" for the official CIFAR batches (keys stay bytes), "latin1"
    for Python 2 pickles holding numpy arrays (e.g. MetaOptNet's). Raises `UnsafePickleError` for any other global
    and `PickleReadError` for a file that cannot be read, both naming the file.
    """
    if isinstance(source, (bytes, bytearray)):
        return _load(io.BytesIO(source), "<bytes>", encoding, errors, len(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            f = open(path, "rb")
        except IsADirectoryError:
            raise PickleReadError(f"cannot unpickle {path}: it is a folder, not a file; remove it or put the data "
                                  f"set's file there") from None
        with f:
            return _load(f, str(path), encoding, errors, os.fstat(f.fileno()).st_size)
    label = getattr(source, "name", None) or "<file object>"
    return _load(source, str(label), encoding, errors, None)


def _array_bytes(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes held by the numpy arrays in a (shallow) data-set structure, each array counted once."""
    import numpy as np

    if id(obj) in seen or depth > 6:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(_array_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_array_bytes(v, seen, depth + 1) for v in obj[:100000])
    return 0


def _load(f: IO[bytes], label: str, encoding: str, errors: str, size: int | None) -> Any:
    try:
        out = _RestrictedUnpickler(f, label, encoding=encoding, errors=errors).load()
        # a pickle stores an array's bytes, so its arrays cannot outweigh the file; a larger total means an array
        # was allocated from a few bytes (numpy.ndarray((10**12,)): lazily mapped, a memory bomb once touched)
        held = _array_bytes(out, set()) if size is not None else 0
        if size is not None and held > 2 * size + (1 << 20):
            raise _Refused(f"builds numpy arrays of {held:,} bytes from a file of {size:,} bytes")
        return out
    except UnsafePickleError:
        raise
    except _Refused as e:
        raise UnsafePickleError(
            f"refusing to load {label}: the pickle {e}, which pickle itself never writes and which could "
            f"allocate without bound (a memory bomb). This file may be corrupt or malicious; re-download it from the "
            f"data set's official source.") from None
    except MemoryError:
        raise PickleReadError(f"cannot unpickle {label}: it asks for more memory than this machine has (a corrupt "
                              f"or malicious file, or a data set too large for this machine); re-download it or "
                              f"free memory") from None
    except RecursionError:
        raise PickleReadError(f"cannot unpickle {label}: it is nested too deeply for a data-set file; it may be "
                              f"corrupt or malicious: re-download it") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, UnicodeDecodeError, OSError) as e:
        raise PickleReadError(f"cannot unpickle {label}: {type(e).__name__}: {e}. The file may be truncated or "
                              f"corrupt; re-download it.") from e
