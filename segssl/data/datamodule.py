"""The data module: labeled and unlabeled training streams, whole volumes for evaluation.

Two separate loaders (rather than one two-stream batch sampler as in SSL4MIS) so that Lightning
shards each with its own distributed sampler under DDP. With ``data.on_device`` (2-D data) the
training set lives on the device instead and batches are built there
(``segssl/data/device_batches.py``), with the same keys and distributions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from monai.data import DataLoader, Dataset
from pytorch_lightning.utilities import CombinedLoader

from segssl.data.layouts import Layout, make_layout
from segssl.data.readers import DataError
from segssl.data.transforms import patch_train_transforms, slice_train_transforms

log = logging.getLogger(__name__)

# layout options that do not change what an image holds (see _attach_view_cache); the fold
# options change which cases train, and the cache key lists the training files already
NOT_IMAGE_OPTIONS = frozenset({"cache", "cache_dir", "workers", "fold", "num_folds"})


def first_item(batch: list[Any]) -> Any:
    """Collate for whole volumes: one volume per step, kept as numpy arrays."""
    return batch[0]


def _loader_length(items: int, batch_size: int) -> int:
    """Batches per epoch of a shuffled loader that drops the last partial batch when there is
    a full one (``_stream_loader``)."""
    return items // batch_size if items >= batch_size else 1


def default_num_workers(on_accelerator: bool) -> int:
    """Loader processes when ``data.num_workers`` is unset. On a GPU, the machine's cores but one
    (the training process); on the CPU none: the network step already uses every core, and
    loader processes beside it oversubscribe the cores, which slows PyTorch's threads down
    many times over."""
    if not on_accelerator:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class SemiSupervisedDataModule(pl.LightningDataModule):
    """Labeled and unlabeled training items (2-D slices or 3-D volumes, by layout) and whole
    volumes for validation and test.

    Args:
        root: dataset folder (``data.root``); the synthetic data is written here on first use.
        num_classes: number of classes including background.
        class_names: foreground class names, in label order (``num_classes - 1`` of them).
        labeled: labeled patients (2-D layouts) or cases (3-D layouts); the rest are unlabeled.
        image_size: side of the square 2-D training slices; ``None`` for 3-D data.
        batch_size: training items per step, labeled and unlabeled together.
        labeled_batch_size: labeled items per step, in ``1..batch_size``.
        name: dataset name for tags, run folders and the report (``acdc``, ``la``, ...).
        layout: file layout, a key of ``segssl.data.layouts.LAYOUTS`` (``ssl4mis``, ``uamt``,
            ``folder``).
        use_unlabeled: stream unlabeled items (``false`` for the supervised baseline).
        views: transform adding the two network views ``image_1`` / ``image_2`` (``filter``
            group); ``None`` gives both networks the augmented image.
        augment: random spatial and intensity augmentation of training items.
        num_workers: loader processes; ``None`` picks by device (``default_num_workers``).
        pin_memory: pinned host memory for the loaders (used on accelerators only).
        synthetic: options of ``ensure_synthetic_dataset`` to generate data in ``root``;
            ``None`` reads ``root`` as it is.
        val_split: split list used for validation (whole volumes).
        test_split: split list used for testing; absent lists fall back to ``val_split``.
        patch_size: 3-D training crop size (required for 3-D layouts).
        layout_options: keyword arguments of the layout class (e.g. ``val_cases``,
            ``spacing``).
        on_device: hold the 2-D training set on the training device and augment whole batches
            there (``true``), not per sample in loaders (``false``); ``auto`` does it on a CUDA
            device when the set fits in ``device_memory_fraction`` of its memory and the views
            have a device form (none, or cached tree filters: ``filter.cache=true``), else
            uses the loaders, saying why in the log. ``true`` refuses what it cannot do.
        device_memory_fraction: the share of the device's memory ``auto`` lets the set take.
        fold: ``data=folder`` without val.list: the cross-validation fold validated on (0..4,
            or ``all``), handed to the layout as its ``fold`` option (docs/own-data.md).
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        class_names: Sequence[str],
        labeled: int,
        image_size: int | None,
        batch_size: int,
        labeled_batch_size: int,
        name: str = "acdc",
        layout: str = "ssl4mis",
        use_unlabeled: bool = True,
        views: Callable[[dict], dict] | None = None,
        augment: bool = True,
        num_workers: int | None = None,
        pin_memory: bool = True,
        synthetic: dict | None = None,
        val_split: str = "val",
        test_split: str = "test",
        patch_size: Sequence[int] | None = None,
        layout_options: dict[str, Any] | None = None,
        on_device: bool | str = "auto",
        device_memory_fraction: float = 0.25,
        fold: int | str | None = None,
    ) -> None:
        super().__init__()
        if on_device not in (True, False, "auto"):
            raise DataError(f"data.on_device={on_device!r}: expected true, false or auto")
        if not 0.0 < device_memory_fraction <= 1.0:
            raise DataError(
                f"data.device_memory_fraction={device_memory_fraction}: expected a fraction in "
                "(0, 1]"
            )
        if not 0 < labeled_batch_size <= batch_size:
            raise DataError(
                f"data.labeled_batch_size={labeled_batch_size} must be in 1..data.batch_size "
                f"({batch_size})"
            )
        if len(class_names) != num_classes - 1:
            raise DataError(
                f"data.class_names has {len(class_names)} names, expected num_classes - 1 = "
                f"{num_classes - 1} (foreground classes)"
            )
        if root is None or not str(root).strip():  # Path("") would be the working directory
            raise DataError(
                f"data.root is empty ({root!r}): give data.root=PATH, the dataset folder, or "
                "leave data.root out to use the dataset's default folder"
            )
        self.root = Path(root).expanduser()
        self._said_no_test_split = False
        self.name, self.layout_name = name, layout
        self.layout_options = dict(layout_options or {})
        if fold is not None:  # data.fold: only the folder layout has folds
            self.layout_options["fold"] = fold
        self.num_classes, self.class_names = num_classes, list(class_names)
        self.labeled, self.image_size = labeled, image_size
        self.patch_size = list(patch_size) if patch_size is not None else None
        self.batch_size, self.labeled_batch_size = batch_size, labeled_batch_size
        self.use_unlabeled = use_unlabeled
        self.views, self.augment = views, augment
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.synthetic = synthetic
        self.val_split, self.test_split = val_split, test_split
        self.on_device, self.device_memory_fraction = on_device, device_memory_fraction
        self._layout = None
        self._train: dict[str, Sequence[dict]] = {}  # lists, or CachedItems
        self._volumes: dict[str, list[dict]] = {}
        self._device_stores: dict[str, Any] = {}  # the device path's slices, by stream

    # -- set-up -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the built-in synthetic data on first use; a ``data.root`` that already holds a
        dataset of another origin (e.g. ``data.root=/path/to/ACDC``) is read as it is."""
        if self.synthetic is None:
            return
        from segssl.data.synthetic import STAMP_NAME, ensure_synthetic_dataset

        if (self.root / "train_slices.list").is_file() and not (self.root / STAMP_NAME).is_file():
            log.info("data.root=%s is an existing dataset: no synthetic data is written", self.root)
            return
        ensure_synthetic_dataset(self.root, **self.synthetic)

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = make_layout(self.layout_name, self.root, **self.layout_options)
        return self._layout

    @property
    def unlabeled_batch_size(self) -> int:
        return self.batch_size - self.labeled_batch_size if self.use_unlabeled else 0

    def resolve_test_split(self) -> str:
        """The test split if the folder has one, else the validation split, said loudly."""
        if self.layout.has_split(self.test_split):
            return self.test_split
        if not self._said_no_test_split:  # asked by train and by each test: said once
            self._said_no_test_split = True
            log.warning(
                "No test split in %s (%s is missing): evaluating on the '%s' split instead.",
                self.root,
                self.layout.list_path(self.test_split).name,
                self.val_split,
            )
        return self.val_split

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not self._train:
            self._train = self._load_training_items()
        if stage in (None, "fit", "validate"):
            self._load_volumes(self.val_split)
        if stage in (None, "test"):
            self._load_volumes(self.resolve_test_split())

    def _load_training_items(self) -> dict[str, Sequence[dict]]:
        """Read and check every training item up front: bad data fails before step one.""" ""
        self.layout.check_files("train")
        labeled_ids, unlabeled_ids = self.layout.split_labeled(self.labeled)
        if len(labeled_ids) < self.labeled_batch_size:
            raise DataError(
                f"data.labeled={self.labeled} gives {len(labeled_ids)} labeled slices, fewer than "
                f"data.labeled_batch_size={self.labeled_batch_size}"
            )
        streams = {"labeled": self._read_training_items(labeled_ids, keep_label=True)}
        if self.unlabeled_batch_size and not unlabeled_ids:
            log.warning(
                "data.labeled=%d labels every training patient in %s: no unlabeled data, so "
                "the unlabeled losses are skipped",
                self.labeled,
                self.root,
            )
        elif self.unlabeled_batch_size:
            streams["unlabeled"] = self._read_training_items(unlabeled_ids, keep_label=False)
        if self._cached_view_keys():
            streams = self._attach_view_cache(streams)
        log.info(
            "Training data %s: %d labeled slices (%d patients), %d unlabeled slices",
            self.root,
            len(labeled_ids),
            self.labeled,
            len(unlabeled_ids),
        )
        return streams

    def _read_training_items(self, ids: list[str], keep_label: bool) -> list[dict]:
        # with cached views the image is read from the view cache per item: kept by none here
        keep_image = not self._cached_view_keys()
        samples = []
        for item_id in ids:
            s = self.layout.load(
                "train", item_id, num_classes=self.num_classes, require_label=keep_label
            )
            item = {"image": s.image[None], "case": item_id} if keep_image else {"case": item_id}
            if keep_label:
                item["label"] = s.label
            samples.append(item)
        return samples

    def _cached_view_keys(self) -> list[str]:
        """Keys of the views pre-computed for training (``filter.cache=true``), else none."""
        if self.views is None or not getattr(self.views, "cache", False):
            return []
        return list(self.views.cache_keys)

    def _attach_view_cache(self, streams: dict[str, list[dict]]) -> dict[str, Sequence[dict]]:
        """Filter every training image once (in parallel, one case per worker at a time) and
        read each item's image and views (each under its ``cache_key``) from the cache when the
        item is taken."""
        from segssl.data.view_cache import CachedItems, cache_key, open_or_build

        items = [item for stream in streams.values() for item in stream]
        files = [self.layout.path("train", item["case"]) for item in items]
        params: dict[str, Any] = {"views": self.views.cache_params(), "layout": self.layout_name}
        # options that change the images (normalisation, resampling, slice axis) are part of the
        # key; where and how the preprocessed cache is kept is not
        options = {k: v for k, v in self.layout_options.items() if k not in NOT_IMAGE_OPTIONS}
        if options:
            params["layout_options"] = options
        key = cache_key(params, files)
        cache_dir = Path(self.views.cache_dir or self.root / ".segssl_cache")
        workers = max(1, self.num_workers or (os.cpu_count() or 1))

        def load(case: str) -> np.ndarray:
            return self.layout.load(
                "train", case, num_classes=self.num_classes, require_label=False
            ).image

        cases = [item["case"] for item in items]
        cache = open_or_build(cache_dir, key, cases, load, self.views.precompute, workers)
        if cache.names != self._cached_view_keys():
            raise DataError(
                f"view cache {cache.path} holds views {cache.names}, expected "
                f"{self._cached_view_keys()} (delete the file to rebuild it)"
            )
        return {name: CachedItems(stream, cache) for name, stream in streams.items()}

    def _load_volumes(self, split: str) -> None:
        if split in self._volumes:
            return
        self.layout.check_files(split)
        volumes = []
        for item_id in self.layout.ids(split):
            s = self.layout.load(split, item_id, num_classes=self.num_classes, require_label=True)
            volumes.append(
                {"image": s.image, "label": s.label, "case": s.case, "spacing": s.spacing}
            )
        self._volumes[split] = volumes

    def volumes(self, split: str) -> list[dict]:
        self._load_volumes(split)
        return self._volumes[split]

    # -- loaders ----------------------------------------------------------------------------
    def _stream_loader(self, samples: list[dict], batch_size: int, workers: int) -> DataLoader:
        transform = self.train_transform()
        return DataLoader(
            Dataset(samples, transform=transform),
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(samples) >= batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory and self._on_accelerator(),
            persistent_workers=workers > 0,
        )

    def train_transform(self):
        """2-D slices are resized to ``image_size``; 3-D volumes are cropped to ``patch_size``."""
        options = dict(views=self.views, augment=self.augment, view_keys=self._cached_view_keys())
        if self.layout.train_ndim == 2:
            return slice_train_transforms(self.image_size, **options)
        if self.patch_size is None:
            raise DataError(f"data.patch_size is required for 3-D training data in {self.root}")
        return patch_train_transforms(self.patch_size, **options)

    def _on_accelerator(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.accelerator.__class__.__name__ != "CPUAccelerator"

    def _active_streams(self) -> dict[str, int]:
        streams = {"labeled": self.labeled_batch_size, "unlabeled": self.unlabeled_batch_size}
        return {name: size for name, size in streams.items() if size and name in self._train}

    def _training_device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def device_path(self, device: torch.device) -> tuple[bool, str]:
        """Whether training batches are built on ``device`` (``data.on_device``), and why.
        ``true`` raises where the device path cannot reproduce the loader path."""
        from segssl.data.device_batches import store_nbytes, view_plan

        if self.on_device is False:
            return False, "data.on_device=false"
        forced = self.on_device is True
        if self.layout.train_ndim != 2:
            if forced:
                raise DataError(
                    f"data.on_device=true holds 2-D training slices; {self.root} trains on 3-D "
                    "patches (set data.on_device=false or auto)"
                )
            return False, "3-D patches are cropped per sample on the host"
        _, unsupported = view_plan(self.views)
        if unsupported:
            if forced:
                raise DataError(f"data.on_device=true cannot make these views: {unsupported}")
            return False, unsupported
        if forced:
            return True, "data.on_device=true"
        if device.type != "cuda":
            return False, f"data.on_device=auto on a {device.type} device"
        need = sum(
            store_nbytes(items, name == "labeled", view_keys=self._cached_view_keys())
            for name, items in self._train.items()
            if name in self._active_streams()
        )
        total = torch.cuda.get_device_properties(device).total_memory
        budget = self.device_memory_fraction * total
        if need > budget:
            return False, (
                f"the training set needs {need / 2**30:.2f} GiB, more than "
                f"data.device_memory_fraction={self.device_memory_fraction} of {device}'s "
                f"{total / 2**30:.1f} GiB"
            )
        return True, f"data.on_device=auto: {need / 2**30:.2f} GiB on {device}"

    def device_batches(
        self, device: torch.device | str = "cpu", seed_offset: int = 0, world_size: int = 1
    ):
        """The training iterable of the device path on ``device`` (stores built once per
        device): as many steps per pass as the loader path's epoch on one of ``world_size``
        ranks; ``seed_offset`` (the rank) gives each rank its own draws."""
        from segssl.data.device_batches import (
            BatchSliceAugment,
            DeviceBatches,
            SliceStore,
            view_plan,
        )

        if not self._train:
            raise DataError("device_batches() before setup('fit'): no training data loaded")
        device = torch.device(device)
        plan, unsupported = view_plan(self.views)
        if unsupported:
            raise DataError(f"data.on_device cannot make these views: {unsupported}")
        cached = self._device_stores
        if cached.get("device") != device:
            cached = {"device": device}
            for name in self._active_streams():
                cached[name] = SliceStore(
                    self._train[name],
                    device,
                    with_labels=name == "labeled",
                    view_keys=self._cached_view_keys(),
                )
            self._device_stores = cached
        active = self._active_streams()
        streams = {name: (cached[name], size) for name, size in active.items()}
        augment = BatchSliceAugment(self.image_size, views=plan, augment=self.augment)
        length = max(
            _loader_length(-(-len(self._train[n]) // world_size), size)  # DistributedSampler
            for n, size in active.items()
        )
        return DeviceBatches(streams, augment, length, seed_offset=seed_offset)

    def train_dataloader(self):
        """The loaders' ``CombinedLoader``, or the device path's batches (``data.on_device``)."""
        if self.on_device is not False:
            device = self._training_device()
            use, why = self.device_path(device)
            if use:
                trainer = self.trainer
                rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
                batches = self.device_batches(device, seed_offset=rank, world_size=world)
                stores = [store for store, _ in batches.streams.values()]
                log.info(
                    "Training batches built on %s (%s): %.1f MiB of slices held there",
                    device, why, sum(s.nbytes for s in stores) / 2**20,
                )  # fmt: skip
                return batches
            if self.on_device == "auto" and device.type == "cuda":
                log.info("Training batches from host loaders: %s", why)
        return self._loader_path()

    def _loader_path(self) -> CombinedLoader:
        active = self._active_streams()
        workers = self.num_workers
        if workers is None:
            workers = default_num_workers(self._on_accelerator())
        per_stream = max(workers // len(active), 1) if workers else 0
        loaders = {
            name: self._stream_loader(self._train[name], size, per_stream)
            for name, size in active.items()
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _volume_loader(self, split: str) -> DataLoader:
        return DataLoader(self.volumes(split), batch_size=1, collate_fn=first_item, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._volume_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._volume_loader(self.resolve_test_split())
