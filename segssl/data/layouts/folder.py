"""Your own data: a folder of NIfTI images, nnU-Net-like names, and split lists.

Layout under ``root``::

    imagesTr/<case>.nii.gz     one image per case (single channel; nnU-Net's <case>_0000.nii.gz
                               is read too), 2-D or 3-D
    labelsTr/<case>.nii.gz     its label map (integers 0..num_classes-1), same shape; a training
                               case without one is unlabeled
    train.list, val.list, test.list   case ids, one a line (test.list optional: val is then
                               evaluated); val and test cases must have labels

``dims=3`` trains on random 3-D patches of the volumes; ``dims=2`` on their slices along
``slice_axis`` (a 2-D image is a volume of one slice), evaluating whole volumes slice by slice
along that axis. The labeled subset is the first ``data.labeled`` cases of ``train.list`` that
have a label file. Each volume's intensities are normalised on read (``normalize``); the voxel
spacing (mm) comes from the NIfTI header.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.transforms import NormalizeIntensity, ScaleIntensity

from segssl.data.readers import DataError, Sample, check_sample, read_list

SPLITS = ("train", "val", "test")
NORMALIZERS = {
    "zscore": NormalizeIntensity(),  # per volume, as UA-MT's LA preprocessing
    "minmax": ScaleIntensity(minv=0.0, maxv=1.0),  # per volume, as SSL4MIS's ACDC
    "none": None,
}
_SLICE_ID = re.compile(r"^(?P<case>.+)_slice_(?P<index>\d+)$")


class FolderLayout:
    """Paths, splits and reading of a NIfTI folder; the only place that knows these names."""

    def __init__(
        self, root: str | Path, dims: int = 2, slice_axis: int = 2, normalize: str = "zscore"
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root} (set data.root=PATH)")
        if dims not in (2, 3):
            raise DataError(f"data.layout_options.dims={dims!r}: expected 2 or 3")
        if slice_axis not in (0, 1, 2):
            raise DataError(f"data.layout_options.slice_axis={slice_axis!r}: expected 0, 1 or 2")
        if normalize not in NORMALIZERS:
            raise DataError(
                f"data.layout_options.normalize={normalize!r}: expected one of {list(NORMALIZERS)}"
            )
        self.train_ndim, self.slice_axis, self.normalize = dims, slice_axis, normalize
        self._cached: tuple[str, Sample] | None = None  # the last volume read (slices share it)

    # -- names ------------------------------------------------------------------------------
    def list_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return self.root / f"{split}.list"

    def has_split(self, split: str) -> bool:
        return self.list_path(split).is_file()

    def image_path(self, case: str) -> Path:
        path = self.root / "imagesTr" / f"{case}.nii.gz"
        nnunet = self.root / "imagesTr" / f"{case}_0000.nii.gz"
        return nnunet if not path.is_file() and nnunet.is_file() else path

    def label_path(self, case: str) -> Path:
        return self.root / "labelsTr" / f"{case}.nii.gz"

    def path(self, split: str, item_id: str) -> Path:
        return self.image_path(self._case_of(split, item_id)[0])

    def cases(self, split: str) -> list[str]:
        return read_list(self.list_path(split))

    def ids(self, split: str) -> list[str]:
        """Case ids; for 2-D training, ``<case>_slice_<k>`` for every slice of every case."""
        if split != "train" or self.train_ndim == 3:
            return self.cases(split)
        return [
            f"{case}_slice_{k}"
            for case in self.cases(split)
            for k in range(self._volume_shape(case)[self.slice_axis])
        ]

    def _case_of(self, split: str, item_id: str) -> tuple[str, int | None]:
        if split != "train" or self.train_ndim == 3:
            return item_id, None
        match = _SLICE_ID.match(item_id)
        if match is None:
            raise DataError(f"{item_id!r} is not a slice id (<case>_slice_<k>) of {self.root}")
        return match["case"], int(match["index"])

    # -- checks -----------------------------------------------------------------------------
    def check_files(self, split: str) -> list[Path]:
        """Every case of a split has its image (and its label, for val/test), else one error
        listing the missing files."""
        cases = self.cases(split)
        missing = [self.image_path(c) for c in cases if not self.image_path(c).is_file()]
        if split != "train":
            missing += [self.label_path(c) for c in cases if not self.label_path(c).is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            need = "an image" if split == "train" else "an image and a label"
            raise DataError(
                f"{self.list_path(split)} names {len(missing)} missing file(s) (each case needs "
                f"{need}), e.g. {shown}"
            )
        return [self.image_path(c) for c in cases]

    def split_labeled(self, num_labeled: int) -> tuple[list[str], list[str]]:
        """Items of the first N labeled cases of ``train.list``, and of all the other cases."""
        cases = self.cases("train")
        with_label = [c for c in cases if self.label_path(c).is_file()]
        if not 1 <= num_labeled <= len(with_label):
            raise DataError(
                f"data.labeled={num_labeled} but {self.list_path('train')} names {len(with_label)} "
                f"case(s) with a label in {self.root / 'labelsTr'}; expected 1 <= data.labeled "
                f"<= {len(with_label)}"
            )
        chosen = set(with_label[:num_labeled])
        items = self.ids("train")
        labeled = [i for i in items if self._case_of("train", i)[0] in chosen]
        unlabeled = [i for i in items if self._case_of("train", i)[0] not in chosen]
        return labeled, unlabeled

    # -- reading ----------------------------------------------------------------------------
    def load(self, split: str, item_id: str, *, num_classes: int, require_label: bool) -> Sample:
        """A training item (patch source volume or slice) or an evaluation volume; for 2-D
        evaluation the slice axis is moved first, the order slice-wise inference expects."""
        case, index = self._case_of(split, item_id)
        volume = self._volume(case, num_classes, require_label)
        if index is not None:
            image = np.take(volume.image, index, axis=self.slice_axis)
            label = None if volume.label is None else np.take(volume.label, index, self.slice_axis)
            return Sample(case=item_id, image=np.ascontiguousarray(image), label=label)
        if split != "train" and self.train_ndim == 2:
            axes = [self.slice_axis, *(a for a in range(3) if a != self.slice_axis)]
            return Sample(
                case=case,
                image=np.ascontiguousarray(volume.image.transpose(axes)),
                label=None if volume.label is None else volume.label.transpose(axes).copy(),
                spacing=tuple(volume.spacing[a] for a in axes) if volume.spacing else None,
            )
        return volume

    def _volume(self, case: str, num_classes: int, require_label: bool) -> Sample:
        if self._cached is not None and self._cached[0] == case:
            return self._cached[1]
        path = self.image_path(case)
        image, spacing = self._read(path)
        normalize = NORMALIZERS[self.normalize]
        image = np.asarray(image if normalize is None else normalize(image), dtype=np.float32)
        label = None
        label_path = self.label_path(case)
        if label_path.is_file():
            label, _ = self._read(label_path)
            if not np.array_equal(label, np.rint(label)):
                raise DataError(f"{label_path}: non-integer label values, expected class indices")
            label = label.astype(np.int64)
        elif require_label:
            raise DataError(f"{label_path}: label file not found for case {case!r}")
        check_sample(
            label_path if label is not None else path,
            image,
            label,
            num_classes=num_classes,
            expected_ndim=3,
        )
        label = None if label is None else label.astype(np.uint8)
        sample = Sample(case=case, image=image, label=label, spacing=spacing)
        self._cached = (case, sample)
        return sample

    def _read(self, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
        """A NIfTI file as a 3-D float32 array (2-D images get a slice axis) and its spacing."""
        try:
            nifti = nib.load(str(path))
            array = np.asarray(nifti.get_fdata(dtype=np.float32))
        except Exception as err:  # nibabel raises several types for unreadable files
            raise DataError(f"{path}: cannot read as NIfTI ({err})") from err
        spacing = [float(z) for z in nifti.header.get_zooms()[: array.ndim]]
        if array.ndim == 2:
            array = np.expand_dims(array, self.slice_axis)
            spacing.insert(self.slice_axis, 1.0)
        if array.ndim != 3:
            raise DataError(
                f"{path}: shape {array.shape}, expected a single-channel 2-D or 3-D image"
            )
        return array, tuple(spacing)

    def _volume_shape(self, case: str) -> tuple[int, ...]:
        """Shape from the header only (no voxel data read), as a 3-D shape."""
        path = self.image_path(case)
        try:
            shape = tuple(int(s) for s in nib.load(str(path)).shape)
        except Exception as err:
            raise DataError(f"{path}: cannot read as NIfTI ({err})") from err
        if len(shape) == 2:
            shape = (*shape[: self.slice_axis], 1, *shape[self.slice_axis :])
        if len(shape) != 3:
            raise DataError(f"{path}: shape {shape}, expected a single-channel 2-D or 3-D image")
        return shape
