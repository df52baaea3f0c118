"""Read pickled data batches (CIFAR, down-sampled ImageNet) without running pickled code.

Only NumPy arrays, lists, dicts, strings and numbers can come out; any other global a pickle
names is refused before it is imported or called.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from condnet.errors import CondnetError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Protocol 5 rebuilds a contiguous array from its bytes: a view and a reshape, nothing else.
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3: a pure function
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def load_pickle(path: Path) -> Any:
    """Unpickle `path` admitting only arrays and plain data (Python 2 pickles included)."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise CondnetError(f"{path}: refused to unpickle: {err}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise CondnetError(
            f"{path}: not a readable pickle batch ({type(err).__name__}: {err})"
        ) from None
