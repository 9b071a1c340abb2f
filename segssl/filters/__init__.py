"""DSAIF structure-aware image filters: Max-tree and Min-tree views of 2-D and 3-D images.

``from segssl.filters import tree_filter, dual_tree_filter`` works as documented, but the names
load on first use (PEP 562): the tree filters need higra (about half a second to import), which
the torch- and higra-free parts such as :mod:`segssl.filters.area_threshold` must not pay for.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# each re-exported name and the submodule that defines it
_EXPORTS = {
    name: "segssl.filters.tree_filter"
    for name in (
        "dequantise",
        "dual_tree_filter",
        "dual_tree_filter_batch",
        "filter_levels",
        "quantise",
        "tree_filter",
    )
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Keeps ``segssl.filters.tree_filter`` the function, as the eager import did.

    Importing the submodule of the same name binds the module on its package; without this, a
    ``from segssl.filters.tree_filter import ...`` anywhere earlier would make
    ``from segssl.filters import tree_filter`` return the module instead of the function.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            return  # the function of that name is found through __getattr__
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
