"""UA-MT's h5 layout of the 2018 Left Atrium challenge data (also used by MC-Net, SS-Net, BCP),
and MC-Net's Pancreas-CT layout, which differs only in its file names.

Layout under ``root``::

    train.list / test.list                         case ids, one a line
    2018LA_Seg_Training Set/<id>/mri_norm2.h5      image float32 (H, W, D), label uint8 {0, 1}
    (Pancreas: Pancreas_h5/<id>_norm.h5            image float32 (H, W, D), label float32 {0, 1})

``image_dir`` and ``file_pattern`` (``{id}`` is the case id) name the files; the defaults are
LA's, ``conf/data/pancreas.yaml`` sets MC-Net's Pancreas names.

Training items are whole volumes (random patches are cut by the training transforms). The
labeled subset is the first N cases of ``train.list``. LA has no validation split: ``val_cases``
K > 0 holds out the last K cases of ``train.list`` as validation (never trained on); K = 0, the
UA-MT protocol, means no validation, so the last checkpoint is tested. A case listed twice in
``train.list``, or in both lists, is refused (``check_split_lists``). The h5 files carry no
spacing (UA-MT resampled LA to 0.625 mm isotropic): distances are in voxels, as in the LA papers,
unless ``spacing`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segssl.data.image_io import InputProtocol, read_h5_sample
from segssl.data.layouts.base import Layout
from segssl.data.readers import DataError, Sample, check_split_lists, read_list


def check_spacing(
    spacing: Sequence[float] | None, ndim: int, name: str
) -> tuple[float, ...] | None:
    """A voxel spacing setting as a tuple of ``ndim`` positive floats (or None)."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or min(values) <= 0:
        raise DataError(f"{name}={list(spacing)}: expected {ndim} positive voxel sizes (mm)")
    return values


class UAMTLayout(Layout):
    """Paths and splits of a UA-MT LA folder; the only place that knows these file names."""

    train_ndim = 3
    #: LA's names (the defaults of ``image_dir`` / ``file_pattern``)
    LA_IMAGE_DIR = "2018LA_Seg_Training Set"
    LA_FILE_PATTERN = "{id}/mri_norm2.h5"
    # validation cases come from the end of the training list
    lists = {"train": "train.list", "val": "train.list", "test": "test.list"}

    def __init__(
        self,
        root: str | Path,
        val_cases: int = 0,
        spacing: Sequence[float] | None = None,
        image_dir: str = LA_IMAGE_DIR,
        file_pattern: str = LA_FILE_PATTERN,
    ) -> None:
        self.root = self.check_root(root)
        if (
            not isinstance(image_dir, str)
            or Path(image_dir).is_absolute()
            or ".." in Path(image_dir).parts
        ):
            raise DataError(
                f"data.layout_options.image_dir={image_dir!r}: expected a folder name inside "
                "data.root"
            )
        if (
            not isinstance(file_pattern, str)
            or file_pattern.count("{id}") != 1
            or file_pattern.replace("{id}", "").count("{")
            or Path(file_pattern).is_absolute()
            or ".." in Path(file_pattern).parts
        ):
            raise DataError(
                f"data.layout_options.file_pattern={file_pattern!r}: expected a relative file "
                "name with one '{id}' for the case id, e.g. '{id}/mri_norm2.h5' (LA) or "
                "'{id}_norm.h5' (Pancreas)"
            )
        self.image_dir = image_dir
        self.file_pattern = file_pattern
        if isinstance(val_cases, bool) or not isinstance(val_cases, int) or val_cases < 0:
            raise DataError(f"data.layout_options.val_cases={val_cases!r}: expected an int >= 0")
        self.val_cases = val_cases
        self.spacing = check_spacing(spacing, 3, "data.layout_options.spacing")

    def list_path(self, split: str) -> Path:
        if split not in self.lists:
            raise DataError(f"unknown split {split!r}; expected one of {sorted(self.lists)}")
        return self.root / self.lists[split]

    def has_split(self, split: str) -> bool:
        """``val`` only with held-out cases (``val_cases`` > 0)."""
        if split == "val" and not self.val_cases:
            return False
        return super().has_split(split)

    def ids(self, split: str) -> list[str]:
        """Case ids of a split; ``val`` is the held-out tail of ``train.list`` (empty if K = 0)."""
        ids = read_list(self.list_path(split))
        self.check_splits()
        if split == "test":
            return ids
        if self.val_cases >= len(ids):
            raise DataError(
                f"data.layout_options.val_cases={self.val_cases} holds out all {len(ids)} cases "
                f"of {self.list_path(split)}; expected fewer"
            )
        cut = len(ids) - self.val_cases
        return ids[:cut] if split == "train" else ids[cut:]

    def check_splits(self) -> None:
        """train.list (validation is its tail) and test.list: no case twice, none in both."""
        check_split_lists({split: self.list_path(split) for split in ("train", "test")})

    def path(self, split: str, item_id: str) -> Path:
        return self.root / self.image_dir / self.file_pattern.format(id=item_id)

    def split_labeled(self, num_labeled: int) -> tuple[list[str], list[str]]:
        """The first N training cases are labeled, the rest unlabeled (one case = one patient)."""
        ids = self.ids("train")
        if not 1 <= num_labeled <= len(ids):
            held_out = f" after holding out val_cases={self.val_cases}" if self.val_cases else ""
            raise DataError(
                f"data.labeled={num_labeled} but {self.list_path('train')} has {len(ids)} "
                f"training cases{held_out}; expected 1 <= data.labeled <= {len(ids)}"
            )
        return ids[:num_labeled], ids[num_labeled:]

    def load(self, split: str, item_id: str, *, num_classes: int, require_label: bool) -> Sample:
        sample = read_h5_sample(
            self.path(split, item_id),
            num_classes=num_classes,
            require_label=require_label,
            expected_ndim=3,
        )
        sample.case = item_id
        label = sample.label
        if label is not None and not np.issubdtype(label.dtype, np.integer):
            # MC-Net stored Pancreas labels as float32 0/1: whole numbers become uint8 classes
            if not np.array_equal(label, np.round(label)):
                raise DataError(
                    f"{self.path(split, item_id)}: 'label' ({label.dtype}) holds values that are "
                    "not whole numbers; expected class indices"
                )
            sample.label = label.astype(np.uint8)
        if self.spacing is not None:
            sample.spacing = self.spacing
        return sample

    @classmethod
    def input_protocol(cls, options: Mapping[str, Any], dims: int) -> InputProtocol:
        """Z-score per volume, as UA-MT stored the h5 files (used as stored); NIfTI axes as
        they are, UA-MT's (H, W, D)."""
        return InputProtocol(
            dims=dims, normalize="zscore", h5_normalize="none", nifti_axes=(0, 1, 2)
        )
