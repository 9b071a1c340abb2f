"""A five-image PNG panel to eyeball what the DSAIF filters keep and remove on one 2-D slice.

Columns: original, Max-tree view, Min-tree view, original - max view (the bright details the
Max-tree filter flattened), min view - original (the dark details the Min-tree filter filled).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from segssl.filters.tree_filter import dual_tree_filter  # noqa: E402

PANEL_TITLES = (
    "original",
    "max-tree view",
    "min-tree view",
    "original - max view",
    "min view - original",
)


# ---------------------------------------------------------------------------------------------
# rendering


def build_filter_panel(
    image: np.ndarray,
    area_threshold: int = 50,
    connectivity: int | None = None,
    title: str | None = None,
) -> Figure:
    """The panel as a matplotlib Figure (one row of five images, each with a colorbar)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image has shape {image.shape}: the panel needs a 2-D image")
    max_view, min_view = dual_tree_filter(image, area_threshold, connectivity)
    low, high = float(image.min()), float(image.max())
    panels = (
        (image, "gray", low, high),
        (max_view, "gray", low, high),
        (min_view, "gray", low, high),
        (image - max_view, "magma", None, None),
        (min_view - image, "magma", None, None),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 4.4))
    for ax, (data, cmap, vmin, vmax), name in zip(axes, panels, PANEL_TITLES, strict=True):
        shown = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    heading = f"DSAIF filters, area threshold {area_threshold}, connectivity {connectivity or 8}"
    figure.suptitle(heading if title is None else f"{title} - {heading}")
    figure.tight_layout()
    return figure


def render_filter_panel(
    image: np.ndarray,
    out_path: str | Path,
    area_threshold: int = 50,
    connectivity: int | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write the panel PNG to ``out_path`` (parent folders created) and return the path."""
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise ValueError(f"out_path={str(out_path)!r}: expected a .png file name")
    figure = build_filter_panel(image, area_threshold, connectivity, title)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_path, dpi=dpi)
    finally:
        plt.close(figure)
    return out_path
