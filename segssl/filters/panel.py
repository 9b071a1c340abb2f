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

from segssl.data.image_io import read_h5, read_nifti, read_png  # noqa: E402
from segssl.filters.tree_filter import dual_tree_filter  # noqa: E402

PANEL_TITLES = (
    "original",
    "max-tree view",
    "min-tree view",
    "original - max view",
    "min view - original",
)
LA_FILE_NAME = "mri_norm2.h5"  # LA volumes are stored (H, W, D), unlike ACDC's (D, H, W)


# ---------------------------------------------------------------------------------------------
# loading


def load_image_for_panel(
    path: str | Path, slice_index: int | None = None, axis: int | None = None
) -> np.ndarray:
    """Read one 2-D float32 image from an h5 file (key ``image``), a NIfTI file or a greyscale
    PNG, through ``segssl.data.image_io`` (so a colour PNG is refused, as by ``predict``).

    For a 3-D volume, ``slice_index`` picks the slice along ``axis`` (default: the middle slice).
    Default axis: 0 for h5 volumes (ACDC stores (D, H, W)) except LA's ``mri_norm2.h5`` and NIfTI
    files, which store the slice axis last (-1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".h5", ".hdf5")):
        array = read_h5(path)
        default_axis = -1 if name == LA_FILE_NAME else 0
    elif name.endswith((".nii", ".nii.gz")):
        array, default_axis = read_nifti(path)[1], -1
    elif name.endswith(".png"):
        array, default_axis = read_png(path), 0
    else:
        raise ValueError(f"{path}: unsupported file type, expected .h5/.hdf5, .nii/.nii.gz or .png")
    image = _pick_slice(array, path, slice_index, default_axis if axis is None else axis)
    return np.ascontiguousarray(image, dtype=np.float32)


def _pick_slice(array: np.ndarray, path: Path, slice_index: int | None, axis: int) -> np.ndarray:
    """2-D arrays pass through; 3-D ones give one slice; anything else is an error."""
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ValueError(f"{path}: image has shape {array.shape}, expected a 2-D or 3-D array")
    if not -3 <= axis < 3:
        raise ValueError(f"{path}: axis={axis} out of range for a 3-D image of shape {array.shape}")
    size = array.shape[axis]
    index = size // 2 if slice_index is None else slice_index
    if not -size <= index < size:
        raise ValueError(
            f"{path}: slice_index={slice_index} out of range for {size} slices along axis {axis}"
        )
    return np.take(array, index, axis=axis)


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
