"""DSAIF structure-aware image filters: Max-tree and Min-tree views of 2-D and 3-D images."""

from segssl.filters.tree_filter import (
    dequantise,
    dual_tree_filter,
    dual_tree_filter_batch,
    filter_levels,
    quantise,
    tree_filter,
)

__all__ = [
    "dequantise",
    "dual_tree_filter",
    "dual_tree_filter_batch",
    "filter_levels",
    "quantise",
    "tree_filter",
]
