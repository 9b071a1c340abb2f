"""SSL4MIS's h5 layout (ACDC, and the built-in synthetic data that copies it).

Layout under ``root``::

    train_slices.list            slice ids, patient by patient (labeled = a prefix of patients)
    val.list / test.list         volume ids
    data/slices/<slice_id>.h5    2-D slice: image (H, W) float, label (H, W) uint8
    data/<volume_id>.h5          volume:    image (D, H, W) float, label (D, H, W) uint8

Ids start with their patient (``patient001_frame01_slice_3``): the labeled subset is all the
slices of the first N patients, and the split lists are compared by patient.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segssl.data.image_io import InputProtocol, read_h5_sample
from segssl.data.layouts.base import Layout
from segssl.data.readers import DataError, Sample, check_split_lists, read_list

SPLIT_LISTS = {"train": "train_slices.list", "val": "val.list", "test": "test.list"}


def patient_of(case_id: str) -> str:
    """Patient id of a slice or volume id (``patient001_frame01_slice_3`` -> ``patient001``)."""
    return case_id.split("_")[0]


def patients_in_order(slice_ids: list[str]) -> list[str]:
    """Patients in order of first appearance, as SSL4MIS takes its labeled subset."""
    seen: dict[str, None] = {}
    for slice_id in slice_ids:
        seen.setdefault(patient_of(slice_id), None)
    return list(seen)


def split_labeled(slice_ids: list[str], num_labeled_patients: int) -> tuple[list[str], list[str]]:
    """Split slices patient-wise: all slices of the first N patients are labeled, the rest not."""
    patients = patients_in_order(slice_ids)
    if num_labeled_patients < 1 or num_labeled_patients > len(patients):
        raise DataError(
            f"data.labeled={num_labeled_patients} but the training list has {len(patients)} "
            f"patients; expected 1 <= data.labeled <= {len(patients)}"
        )
    chosen = set(patients[:num_labeled_patients])
    labeled = [s for s in slice_ids if patient_of(s) in chosen]
    unlabeled = [s for s in slice_ids if patient_of(s) not in chosen]
    return labeled, unlabeled


class SSL4MISLayout(Layout):
    """Paths and splits of an SSL4MIS-layout folder (ACDC, synthetic): 2-D training slices,
    evaluation volumes. The only place that knows these file names."""

    train_ndim = 2

    def __init__(self, root: str | Path) -> None:
        self.root = self.check_root(root)

    def list_path(self, split: str) -> Path:
        if split not in SPLIT_LISTS:
            raise DataError(f"unknown split {split!r}; expected one of {sorted(SPLIT_LISTS)}")
        return self.root / SPLIT_LISTS[split]

    def ids(self, split: str) -> list[str]:
        """The split's ids, once all the split lists are checked together (by patient)."""
        ids = read_list(self.list_path(split))
        self.check_splits()
        return ids

    def check_splits(self) -> None:
        """Slices of train_slices.list and volumes of val/test.list are compared by patient."""
        lists = {split: self.list_path(split) for split in SPLIT_LISTS}
        check_split_lists(lists, case_of=patient_of, unit="patient")

    def path(self, split: str, item_id: str) -> Path:
        """Training items are slices, evaluation items volumes."""
        if split == "train":
            return self.root / "data" / "slices" / f"{item_id}.h5"
        return self.root / "data" / f"{item_id}.h5"

    def split_labeled(self, num_labeled: int) -> tuple[list[str], list[str]]:
        """All slices of the first ``num_labeled`` patients are labeled (SSL4MIS's rule)."""
        return split_labeled(self.ids("train"), num_labeled)

    def load(self, split: str, item_id: str, *, num_classes: int, require_label: bool) -> Sample:
        sample = read_h5_sample(
            self.path(split, item_id),
            num_classes=num_classes,
            require_label=require_label,
            expected_ndim=self.train_ndim if split == "train" else 3,
        )
        sample.case = item_id
        return sample

    @classmethod
    def input_protocol(cls, options: Mapping[str, Any], dims: int) -> InputProtocol:
        """Min-max to [0, 1] per volume (as ``prepare_acdc`` stored the h5 files, which are used
        as stored); NIfTI (x, y, z) is read as (z, y, x) for 2-D models, slices along z as
        ``prepare_acdc`` cut them, and with its own axis order for 3-D models."""
        return InputProtocol(
            dims=dims,
            normalize="minmax",
            h5_normalize="none",
            nifti_axes=(2, 1, 0) if dims == 2 else (0, 1, 2),
        )
