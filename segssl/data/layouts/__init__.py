"""Dataset layouts: how a data folder's files and split lists become training items and
evaluation volumes. Each implements ``Layout`` (``base.py``); ``data.layout`` names one here.

- ``ssl4mis``: SSL4MIS's h5 slices and volumes (ACDC, the built-in synthetic data);
- ``uamt``: UA-MT's h5 volumes of the Left Atrium data;
- ``folder``: a NIfTI folder of your own, nnU-Net-like names.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from segssl.data.layouts.base import Layout
from segssl.data.layouts.folder import FolderLayout
from segssl.data.layouts.ssl4mis import SSL4MISLayout
from segssl.data.layouts.uamt import UAMTLayout
from segssl.data.readers import DataError

LAYOUTS: dict[str, type[Layout]] = {
    "ssl4mis": SSL4MISLayout,
    "uamt": UAMTLayout,
    "folder": FolderLayout,
}

__all__ = ["LAYOUTS", "FolderLayout", "Layout", "SSL4MISLayout", "UAMTLayout", "make_layout"]


def make_layout(name: str, root: str | Path, **options: Any) -> Layout:
    """The reader of a dataset layout by name (``data.layout``) with its ``data.layout_options``."""
    if name not in LAYOUTS:
        raise DataError(f"data.layout={name!r} is unknown; expected one of {sorted(LAYOUTS)}")
    layout = LAYOUTS[name]
    try:
        inspect.signature(layout).bind(root, **options)
    except TypeError as err:
        raise DataError(f"data.layout_options={options} do not fit layout {name!r}: {err}") from err
    return layout(root, **options)
