"""Your own data: a folder of NIfTI images, nnU-Net-like names, and split lists.

Layout under ``root``::

    imagesTr/<case>.nii.gz     one image per case (single channel; nnU-Net's <case>_0000.nii.gz
                               is read too), 2-D or 3-D
    labelsTr/<case>.nii.gz     its label map (integers 0..num_classes-1), same shape; a training
                               case without one is unlabeled
    train.list, val.list, test.list   case ids, one a line (test.list optional: val is then
                               evaluated); val and test cases must have labels; a case may
                               appear once, in one list
    splits_final.json          nnU-Net's cross-validation folds, used when there is no val.list:
                               ``[{"train": [...], "val": [...]}, ...]`` (labeled cases)

Without ``val.list`` the split is nnU-Net's: ``fold`` K (``data.fold``; null = 0) of a
``num_folds``-fold cross-validation over the labeled training cases (those of ``train.list``, or
every case of imagesTr not in ``test.list``), the fold's held-out cases validating. The folds are
read from ``splits_final.json`` when the data folder has one (yours, or nnU-Net's: the same
format), else made as nnU-Net makes them (the sorted case ids shuffled with seed 12345 and cut
into ``num_folds`` parts: the same folds as nnU-Net's for the same cases) and written there,
never over an existing file, so every fold and later run uses one split. Images without a label
train as unlabeled data in every fold. ``fold=all`` trains on every labeled case and, as in
nnU-Net, validates on them too (no held-out case: the best checkpoint is chosen on training data).

``dims=3`` trains on random 3-D patches of the volumes; ``dims=2`` on their slices along
``slice_axis`` (a 2-D image is a volume of one slice), evaluating whole volumes slice by slice
along that axis. The labeled subset is the first ``data.labeled`` cases of ``train.list`` (or
of the fold's ``train`` list) that have a label file. Each volume's intensities are normalised
on read (``normalize``; ``ct`` with the dataset's numbers ``intensity``); the voxel spacing (mm)
comes from the NIfTI header.
With ``target_spacing`` every case is first resampled to that spacing (``segssl.data.resample``:
image linear, label nearest), and the resampled volume's spacing is the target.

With ``cache`` (the default) each case is decoded, checked and normalised once, in threads, into
uncompressed ``.npy`` files under ``cache_dir`` (default ``<root>/.cache``; see
``segssl.data.preprocessed``), stored with the slice axis first for 2-D training so that a slice
is one contiguous block; training then reads slices and patches from memory maps instead of
decompressing a whole ``.nii.gz`` per sample, and memory stays bounded by the OS page cache.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from segssl.data import image_io, resample
from segssl.data.layouts.base import Layout
from segssl.data.preprocessed import (
    CaseJob,
    Entry,
    Prepared,
    PreprocessedCache,
    ensure_open_files,
)
from segssl.data.readers import DataError, Sample, check_sample, check_split_lists, read_list
from segssl.utils.atomic import WriteError, temporary_sibling

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# per-volume intensity normalisation (segssl.data.image_io.normalise, as predict uses): zscore as
# UA-MT's LA preprocessing, minmax (to [0, 1]) as SSL4MIS's ACDC (a constant volume becomes
# zeros); ct (nnU-Net's) with the dataset's numbers given in ``intensity``
NORMALIZERS = image_io.NORMALIZATIONS
_SLICE_ID = re.compile(r"^(?P<case>.+)_slice_(?P<index>\d+)$")
# Bump when what the cache stores for a case changes (reading, checks, normalisation, axes), so
# that entries of the older code are rebuilt rather than trusted.
PREPROCESS_VERSION = "folder-2"  # 2: normalised in float64 by image_io (was MONAI, float32)
# nnU-Net's cross-validation: its file name and the seed its folds are shuffled with
SPLITS_FILE = "splits_final.json"
SPLIT_SEED = 12345
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Split:
    """The cases of each split and where they came from (for messages and the log)."""

    cases: dict[str, list[str]]
    sources: dict[str, str]
    description: str
    folds: int = 0  # of the cross-validation split it is a fold of


class FolderLayout(Layout):
    """Paths, splits and reading of a NIfTI folder; the only place that knows these names."""

    def __init__(
        self,
        root: str | Path,
        dims: int = 2,
        slice_axis: int = 2,
        normalize: str = "zscore",
        cache: bool = True,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        target_spacing: list[float] | None = None,
        intensity: dict[str, float] | None = None,
        fold: int | str | None = None,
        num_folds: int = 5,
    ) -> None:
        """Args:
        root: the folder holding imagesTr/, labelsTr/ and the split lists.
        dims: 2 to train on slices along ``slice_axis``, 3 on patches of whole volumes.
        slice_axis: the volume axis (0, 1 or 2) slices are taken along for 2-D.
        normalize: per-volume intensity normalisation: zscore, minmax or none.
        cache: preprocess each case once into memory-mappable ``.npy`` files (False: decode
            the NIfTI files on every read, keeping only the last volume).
        cache_dir: where the preprocessed cases go (default ``<root>/.cache``).
        workers: threads that preprocess cases (default: the CPU count, at most 8).
        target_spacing: resample every case to this spacing (mm, [s0, s1, s2] in the volume's
            axis order: the NIfTI header's for 3-D images; a 2-D image's slice axis, inserted
            at ``slice_axis``, is never resampled); None: the cases' own grids.
        intensity: ``{low, high, mean, std}`` of ``normalize=ct``: the dataset's foreground
            intensity percentiles to clip to, then its foreground mean and std.
        fold: without ``val.list``, the cross-validation fold validated on (0 ..
            ``num_folds`` - 1; null: 0), or ``all`` (see the module text); with the lists: null.
        num_folds: folds of the automatic split (nnU-Net's 5).
        """
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
        if not isinstance(cache, bool):
            raise DataError(f"data.layout_options.cache={cache!r}: expected true or false")
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise DataError(f"data.layout_options.workers={workers!r}: expected an int >= 1")
        self.train_ndim, self.slice_axis, self.normalize = dims, slice_axis, normalize
        self.fold, self.num_folds = check_fold(fold, num_folds)
        self.save_split = True  # write a made split to splits_final.json (plan --print: no)
        self._split: Split | None = None
        self.target_spacing = resample.check_target_spacing(target_spacing)
        self.intensity = image_io.check_intensity(intensity, normalize)
        # stored axis order: slice axis first for 2-D (a slice is contiguous), as read for 3-D
        self.axes = (
            (slice_axis, *(a for a in range(3) if a != slice_axis)) if dims == 2 else (0, 1, 2)
        )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / ".cache"
        self.workers = workers
        options: dict = {"slice_axis": slice_axis, "normalize": normalize, "axes": list(self.axes)}
        # keyed only when they change what is stored, so default settings keep their entries
        if self.target_spacing is not None:
            options["target_spacing"] = list(self.target_spacing)
        if normalize == "ct":
            options["intensity"] = self.intensity
        self._store = (
            PreprocessedCache(self.cache_dir / "folder", PREPROCESS_VERSION, options)
            if cache
            else None
        )
        self._entries: dict[str, Entry] = {}  # memory-mapped cases opened so far
        self._prepared = False
        self._cached: tuple[str, Sample] | None = None  # uncached: the last volume read

    @classmethod
    def input_protocol(cls, options: Mapping[str, Any], dims: int) -> image_io.InputProtocol:
        """The layout's ``normalize`` (``ct`` with its ``intensity`` numbers) for NIfTI, PNG and
        h5 input alike; 2-D models slice along its ``slice_axis``; NIfTI input is resampled to
        its ``target_spacing``."""
        slice_axis = int(options.get("slice_axis", 2))
        how = options.get("normalize", "zscore")
        order = (slice_axis, *(a for a in range(3) if a != slice_axis))
        return image_io.InputProtocol(
            dims=dims,
            normalize=how,
            h5_normalize=how,
            nifti_axes=order if dims == 2 else (0, 1, 2),
            target_spacing=options.get("target_spacing"),
            intensity=options.get("intensity"),
        )

    # -- names ------------------------------------------------------------------------------
    def list_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return self.root / f"{split}.list"

    @property
    def splits_path(self) -> Path:
        return self.root / SPLITS_FILE

    def uses_lists(self) -> bool:
        """The split lists say train and val (else the cross-validation split does)."""
        return self.list_path("val").is_file()

    def has_split(self, split: str) -> bool:
        if split == "test" or self.uses_lists():
            return self.list_path(split).is_file()
        return split in SPLITS  # train and val come from the folds

    def source(self, split: str) -> str:
        """Where a split's cases come from, as messages name it."""
        if split == "test" or self.uses_lists():
            return str(self.list_path(split))
        return self.split().sources[split]

    def image_path(self, case: str) -> Path:
        path = self.root / "imagesTr" / f"{case}.nii.gz"
        nnunet = self.root / "imagesTr" / f"{case}_0000.nii.gz"
        return nnunet if not path.is_file() and nnunet.is_file() else path

    def label_path(self, case: str) -> Path:
        return self.root / "labelsTr" / f"{case}.nii.gz"

    def path(self, split: str, item_id: str) -> Path:
        return self.image_path(self._case_of(split, item_id)[0])

    def cases(self, split: str) -> list[str]:
        """The split's case ids, once all the splits are checked together."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        if split == "test" or self.uses_lists():
            cases = read_list(self.list_path(split))
            self.check_splits()
            return cases
        return list(self.split().cases[split])

    def check_splits(self) -> None:
        """No case twice in a list, none in two of train/val/test (``plan`` reads the splits
        through this layout too); the cross-validation split is checked the same way."""
        if self.uses_lists():
            if self.fold is not None:
                raise DataError(
                    f"data.fold={self.fold}: {self.list_path('val')} already says which cases "
                    "validate; remove data.fold, or remove val.list for the "
                    f"{self.num_folds}-fold cross-validation split ({SPLITS_FILE})"
                )
            check_split_lists({split: self.list_path(split) for split in SPLITS})
            return
        self.split()

    # -- the cross-validation split ------------------------------------------------------------
    def image_cases(self) -> list[str]:
        """Every case id of imagesTr (``<case>.nii.gz``, or nnU-Net's ``<case>_0000.nii.gz``
        with the other channels' files not counted), sorted."""
        folder = self.root / "imagesTr"
        names = sorted(
            p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz") if not p.name[0] == "."
        )  # fmt: skip
        nnunet = any(n.endswith("_0000") for n in names)
        cases = []
        for name in names:
            match = _CHANNEL.match(name)
            if nnunet and match:
                if match["channel"] == "0000":
                    cases.append(match["case"])
            else:
                cases.append(name)
        return sorted(dict.fromkeys(cases))

    def split(self) -> Split:
        """Train and val of ``fold`` (see the module text), made once and checked: no case
        twice in a split, none in two (a fold's train and val, or test.list)."""
        if self._split is None:
            self._split = self._make_split()
            log.info("%s", self._split.description)
            if self.fold == "all":
                log.warning(
                    "data.fold=all validates on the training cases (nnU-Net's 'all'): the best "
                    "checkpoint and the validation Dice are on training data; test on a "
                    "test.list for held-out numbers"
                )
        return self._split

    def _make_split(self) -> Split:
        if self.list_path("train").is_file():
            check_split_lists({s: self.list_path(s) for s in ("train", "test")})
            pool, where = (
                read_list(self.list_path("train")),
                f"the cases of {self.list_path('train')}",
            )
        else:
            pool, where = self.image_cases(), f"the cases of {self.root / 'imagesTr'}"
            if not pool:
                raise DataError(
                    f"{self.root / 'imagesTr'}: no images (<case>.nii.gz or <case>_0000.nii.gz)"
                )
        test = read_list(self.list_path("test")) if self.has_split("test") else []
        if not self.list_path("train").is_file():
            pool = [c for c in pool if c not in set(test)]
            if test:
                where += f" not in {self.list_path('test')}"
        labeled = [c for c in pool if self.label_path(c).is_file()]
        unlabeled = [c for c in pool if c not in set(labeled)]
        if self.splits_path.is_file():
            folds = read_folds(self.splits_path)
            made = f"read from {self.splits_path}"
        else:
            folds = make_folds(labeled, self.num_folds, where, self.root / "labelsTr")
            made = f"made from {where} with seed {SPLIT_SEED} (nnU-Net's)"
            if self.save_split:
                made += self.write_folds(folds)
        fold = 0 if self.fold is None else self.fold
        if fold != "all" and fold >= len(folds):
            raise DataError(
                f"data.fold={fold}: {self.splits_path} has {len(folds)} folds (0 .. "
                f"{len(folds) - 1}); choose one of them, or all"
            )
        name = f"{self.splits_path} fold {fold}"
        if fold == "all":
            train = sorted({c for f in folds for c in f["train"] + f["val"]})
            train = shuffled(train)
            val = list(train)
            sources = {"train": f"{name} (every case of its folds)", "val": f"{name} (= train)"}
        else:
            train, val = list(folds[fold]["train"]), list(folds[fold]["val"])
            sources = {"train": f"{name} 'train'", "val": f"{name} 'val'"}
        check_fold_cases(self.splits_path, fold, train, val, test, self.list_path("test"))
        left_out = [c for c in labeled if c not in set(train) | set(val)]
        if left_out:
            log.warning(
                "%d labeled case(s) of %s are in neither 'train' nor 'val' of %s, so not used "
                "(e.g. %s); delete %s to make a new split",
                len(left_out), where, name, ", ".join(left_out[:3]), self.splits_path,
            )  # fmt: skip
        extra = [c for c in unlabeled if c not in set(train) | set(val)]
        train += extra
        sources["test"] = str(self.list_path("test"))
        description = (
            f"data=folder split: fold {fold} of {len(folds)} ({made}): {len(train) - len(extra)} "
            f"labeled + {len(extra)} unlabeled training cases, "
            + (
                "validating on the training cases (fold all: none held out)"
                if fold == "all"
                else f"{len(val)} validation cases ({' '.join(val[:50])}"
                + (" ..." if len(val) > 50 else "")
                + ")"
            )
        )
        return Split({"train": train, "val": val, "test": test}, sources, description, len(folds))

    def write_folds(self, folds: list[dict[str, list[str]]]) -> str:
        """Write the folds to ``splits_final.json`` unless a file is there (never replaced);
        returns how it went, for the log. A read-only data folder is no error: the split is
        made the same way on every read."""
        target = self.splits_path
        text = json.dumps(folds, indent=1) + "\n"
        try:
            temporary = temporary_sibling(target)
            temporary.write_text(text, encoding="utf-8")
            try:
                os.link(temporary, target)  # fails if the file exists: never replaces one
            except FileExistsError:
                return f"; {target} appeared meanwhile and was kept"
            finally:
                temporary.unlink(missing_ok=True)
        except OSError as err:
            log.warning(
                "%s cannot be written (%s): the split is made again, the same way, on every "
                "read; copy it there yourself to keep it if cases change", target, err,
            )  # fmt: skip
            return "; not saved"
        return f"; saved to {target}"

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
                f"{self.source(split)} names {len(missing)} missing file(s) (each case needs "
                f"{need}), e.g. {shown}"
            )
        return [self.image_path(c) for c in cases]

    def split_labeled(self, num_labeled: int) -> tuple[list[str], list[str]]:
        """Items of the first N labeled training cases (of ``train.list``, or of the fold's
        ``train`` in its order), and of all the other cases."""
        cases = self.cases("train")
        with_label = [c for c in cases if self.label_path(c).is_file()]
        if not 1 <= num_labeled <= len(with_label):
            raise DataError(
                f"data.labeled={num_labeled} but {self.source('train')} names {len(with_label)} "
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
        evaluation the slice axis is moved first, the order slice-wise inference expects.
        From the cache these are memory maps (copy-on-write), else arrays in memory."""
        case, index = self._case_of(split, item_id)
        if self._store is None:
            return self._load_decoded(split, item_id, case, index, num_classes, require_label)
        entry = self._entry(case)
        image, label = entry.arrays["image"], entry.arrays.get("label")
        label_path = self.label_path(case)
        if label is None and require_label:
            raise DataError(f"{label_path}: label file not found for case {case!r}")
        if label is not None:
            check_label_range(label_path, *entry.info["label_range"], num_classes=num_classes)
        if index is not None:  # stored slice axis first: slice k is one contiguous block
            return Sample(
                case=item_id, image=image[index], label=None if label is None else label[index]
            )
        spacing = tuple(float(entry.info["spacing"][a]) for a in self.axes)
        return Sample(case=case, image=image, label=label, spacing=spacing)

    def _load_decoded(
        self,
        split: str,
        item_id: str,
        case: str,
        index: int | None,
        num_classes: int,
        require_label: bool,
    ) -> Sample:
        """``cache=false``: decode the NIfTI files (the last volume is kept for its slices)."""
        volume = self._volume(case, num_classes, require_label)
        if index is not None:
            image = np.take(volume.image, index, axis=self.slice_axis)
            label = None if volume.label is None else np.take(volume.label, index, self.slice_axis)
            return Sample(case=item_id, image=np.ascontiguousarray(image), label=label)
        if split != "train" and self.train_ndim == 2:
            axes = self.axes
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
        label_path = self.label_path(case)
        if not label_path.is_file() and require_label:
            raise DataError(f"{label_path}: label file not found for case {case!r}")
        image, label, spacing = read_case(
            self.image_path(case),
            label_path if label_path.is_file() else None,
            self.slice_axis,
            self.normalize,
            target_spacing=self.target_spacing,
            intensity=self.intensity,
        )
        if label is not None:
            lo, hi = label_range(label)
            check_label_range(label_path, lo, hi, num_classes=num_classes)
            label = label.astype(np.uint8)
        sample = Sample(case=case, image=image, label=label, spacing=spacing)
        self._cached = (case, sample)
        return sample

    def _volume_shape(self, case: str) -> tuple[int, ...]:
        """The case's 3-D shape (resampled, with ``target_spacing``): from the cache, else from
        the header only (no voxel data)."""
        if self._store is not None:
            return tuple(self._entry(case).info["shape"])
        path = self.image_path(case)
        try:
            header = nib.load(str(path)).header
            shape = tuple(int(s) for s in header.get_data_shape())
            spacing = [float(z) for z in header.get_zooms()]
        except Exception as err:
            raise DataError(f"{path}: cannot read as NIfTI ({err})") from err
        while len(shape) > 3 and shape[-1] == 1:  # as image_io.read_nifti drops them
            shape = shape[:-1]
        spacing = spacing[: len(shape)]
        if len(shape) == 2:
            shape = (*shape[: self.slice_axis], 1, *shape[self.slice_axis :])
            spacing.insert(self.slice_axis, 1.0)
        if len(shape) != 3:
            raise DataError(f"{path}: shape {shape}, expected a single-channel 2-D or 3-D image")
        if self.target_spacing is not None:
            shape = resample.target_shape(shape, spacing, self.target_spacing)
        return shape

    # -- the preprocessed cache -------------------------------------------------------------
    def _job(self, case: str) -> CaseJob:
        label = self.label_path(case)
        return self._store.job(case, (self.image_path(case), label if label.is_file() else None))

    def _prepare(self, jobs: list[CaseJob]) -> None:
        workers = self.workers or max(1, min(8, os.cpu_count() or 1))
        prepare = partial(
            prepare_case,
            slice_axis=self.slice_axis,
            normalize=self.normalize,
            axes=self.axes,
            target_spacing=self.target_spacing,
            intensity=self.intensity,
        )
        try:
            self._store.ensure(jobs, prepare, workers, desc=f"Preprocessing {self.root.name}")
        except WriteError as err:
            raise DataError(
                f"{err}: the preprocessed cache cannot be written; set "
                "data.layout_options.cache_dir=PATH to a writable folder (or "
                "data.layout_options.cache=false to decode the NIfTI files on every read)"
            ) from err

    def prepare_all(self) -> None:
        """Preprocess every case the split lists name (that has an image) in one parallel
        pass; missing files are left to ``check_files`` to report."""
        if self._prepared or self._store is None:
            return
        cases = dict.fromkeys(c for s in SPLITS if self.has_split(s) for c in self.cases(s))
        jobs = [self._job(c) for c in cases if self.image_path(c).is_file()]
        self._prepare(jobs)
        ensure_open_files(2 * len(jobs))
        self._prepared = True

    def _entry(self, case: str) -> Entry:
        """The case's memory-mapped arrays, preprocessed first if needed."""
        if case in self._entries:
            return self._entries[case]
        self.prepare_all()
        if not self.image_path(case).is_file():
            raise DataError(f"{self.image_path(case)}: image file not found for case {case!r}")
        job = self._job(case)
        entry = self._store.open(job)
        if entry is None:  # a case outside the lists, or a file changed since prepare_all
            self._prepare([job])
            entry = self._store.open(job)
        if entry is None:
            raise DataError(f"{job.entry}: preprocessed case {case!r} cannot be read back")
        self._entries[case] = entry
        return entry


# -- cross-validation folds -------------------------------------------------------------------
def check_fold(fold: object, num_folds: object) -> tuple[int | str | None, int]:
    """``data.fold`` as None, a fold index or ``"all"``; ``num_folds`` an int >= 2."""
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise DataError(f"data.layout_options.num_folds={num_folds!r}: expected an int >= 2")
    if fold is None or fold == "all":
        return fold, num_folds
    if isinstance(fold, str) and fold.isdigit():
        fold = int(fold)
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise DataError(
            f"data.fold={fold!r}: expected a fold number 0 .. {num_folds - 1}, all, or null"
        )
    return fold, num_folds


def shuffled(cases: list[str]) -> list[str]:
    """The sorted cases in nnU-Net's seeded order (``numpy.random.RandomState(12345)``)."""
    order = np.arange(len(cases))
    np.random.RandomState(SPLIT_SEED).shuffle(order)
    ordered = sorted(cases)
    return [ordered[i] for i in order]


def make_folds(
    labeled: list[str], num_folds: int, where: str, labels: Path
) -> list[dict[str, list[str]]]:
    """nnU-Net's K-fold split of the labeled cases: their sorted ids shuffled with seed 12345
    and cut into K parts in order, the first ``len % K`` one case larger; part k validates fold
    k. The same folds as nnU-Net's for the same cases (its ``val`` lists in this order, its
    ``train`` lists sorted); here each ``train`` list is in the shuffled order too, so that the
    first ``data.labeled`` of it are a random subset (and the first 3 are in the first 7)."""
    if len(labeled) < num_folds:
        raise DataError(
            f"{len(labeled)} labeled case(s) in {where} (with a label in {labels}) for a "
            f"{num_folds}-fold split: each fold validates on at least one; add labels, set "
            f"data.layout_options.num_folds=2..{max(2, len(labeled))}, or write a val.list "
            "(with train.list: your own split)"
        )
    order = shuffled(labeled)
    sizes = [len(order) // num_folds + (1 if k < len(order) % num_folds else 0)
             for k in range(num_folds)]  # fmt: skip
    folds, start = [], 0
    for size in sizes:
        val = order[start : start + size]
        folds.append({"train": [c for c in order if c not in set(val)], "val": val})
        start += size
    return folds


def read_folds(path: Path) -> list[dict[str, list[str]]]:
    """The folds of a ``splits_final.json``, checked for nnU-Net's format."""
    try:
        folds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot be read as JSON ({err})") from err
    expected = 'expected nnU-Net\'s format, a list of {"train": [case ids], "val": [case ids]}'
    if not isinstance(folds, list) or not folds:
        raise DataError(f"{path}: {expected}")
    for k, fold in enumerate(folds):
        if not isinstance(fold, dict) or not all(
            isinstance(fold.get(key), list) and all(isinstance(c, str) for c in fold[key])
            for key in ("train", "val")
        ):
            raise DataError(f"{path}: fold {k} is not {{'train': [...], 'val': [...]}}; {expected}")
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in folds]


def check_fold_cases(
    path: Path, fold: int | str, train: list[str], val: list[str], test: list[str], test_list: Path
) -> None:
    """The fold's cases as ``check_split_lists`` checks lists: none twice in a split, none in
    two (``fold=all`` validates on its training cases by design)."""
    named = {"train": train, "val": val}
    for key, cases in named.items():
        seen: dict[str, int] = {}
        for index, case in enumerate(cases):
            if case in seen:
                raise DataError(
                    f"{path}: fold {fold} lists {case!r} twice in {key!r} (entries {seen[case]} "
                    f"and {index}); each case may appear once: remove one"
                )
            seen[case] = index
    if fold != "all":
        both = [c for c in val if c in set(train)]
        if both:
            raise DataError(
                f"{path}: fold {fold} lists {both[0]!r} in both 'train' and 'val' "
                f"({len(both)} case(s) in all); a validation case must not be trained on"
            )
    tested = [c for c in train + val if c in set(test)]
    if tested:
        raise DataError(
            f"case {tested[0]!r} is in fold {fold} of {path} and in {test_list} "
            f"({len(tested)} case(s) in all); a test case must not be trained or validated on: "
            "keep each case in one"
        )


# -- reading and checking one case (shared by the cached and the decoding path) ----------------
def read_nifti(path: Path, slice_axis: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI file as a 3-D float32 array (2-D images get a slice axis) and its spacing."""
    nifti, array = image_io.read_nifti(path)
    spacing = [float(z) for z in nifti.header.get_zooms()[: array.ndim]]
    if array.ndim == 2:
        array = np.expand_dims(array, slice_axis)
        spacing.insert(slice_axis, 1.0)
    return array, tuple(spacing)


def read_case(
    image_path: Path,
    label_path: Path | None,
    slice_axis: int,
    normalize: str,
    *,
    target_spacing: tuple[float, float, float] | None = None,
    intensity: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...]]:
    """A case's float32 image, its int64 label (or None) and spacing, resampled to
    ``target_spacing`` (the image's header spacing is the source grid of both; image linear,
    label nearest) and then normalised; checked for everything but the label range (which
    depends on ``data.num_classes``)."""
    image, spacing = read_nifti(image_path, slice_axis)
    label = None
    if label_path is not None:
        label, _ = read_nifti(label_path, slice_axis)
        if not np.array_equal(label, np.rint(label)):
            raise DataError(f"{label_path}: non-integer label values, expected class indices")
        label = label.astype(np.int64)
        if label.shape != image.shape:
            raise DataError(
                f"{label_path}: 'label' shape {label.shape} != 'image' shape {image.shape}"
            )
    if target_spacing is not None:
        image, new_spacing = resample.resample(image, spacing, target_spacing, "linear")
        if label is not None:
            label, _ = resample.resample(label, spacing, target_spacing, "nearest")
        spacing = new_spacing
    image = image_io.normalise(image, normalize, image_path, constant="zeros", intensity=intensity)
    # the range check needs num_classes: here a bound no label reaches
    check_sample(label_path or image_path, image, None, num_classes=1, expected_ndim=3)
    return image, label, spacing


def label_range(label: np.ndarray) -> tuple[int, int]:
    return (int(label.min()), int(label.max())) if label.size else (0, 0)


def check_label_range(path: Path, lo: int, hi: int, *, num_classes: int) -> None:
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"{path}: 'label' values span [{lo}, {hi}], expected classes 0..{num_classes - 1} "
            f"(data.num_classes={num_classes})"
        )


def prepare_case(
    job: CaseJob,
    *,
    slice_axis: int,
    normalize: str,
    axes: tuple[int, int, int],
    target_spacing: tuple[float, float, float] | None = None,
    intensity: dict[str, float] | None = None,
) -> Prepared:
    """What the cache stores for a case: image (float32) and label (uint8 when its values fit)
    in ``axes`` order, with the shape (before the transpose), spacing and label range."""
    image_path, label_path = job.sources
    image, label, spacing = read_case(
        image_path,
        label_path,
        slice_axis,
        normalize,
        target_spacing=target_spacing,
        intensity=intensity,
    )
    arrays = {"image": image.transpose(axes)}
    info: dict = {"shape": list(image.shape), "spacing": list(spacing)}
    if label is not None:
        lo, hi = label_range(label)
        dtype = np.uint8 if lo >= 0 and hi <= 255 else np.int64
        arrays["label"] = label.astype(dtype).transpose(axes)
        info["label_range"] = [lo, hi]
    return Prepared(arrays, info)
