"""What a dataset layout is: the one interface through which training, ``test`` and ``predict``
read a data folder, as MONAI's ``ImageReader`` is for image files.

A layout knows a folder's file names and split lists and nothing else of a run: the data module
asks it for ids, files and samples, ``test`` for which splits it has, and ``predict`` (which has
the checkpoint's config, not the data) how the training images were read from their files. A
new layout subclasses ``Layout`` and is named in ``segssl.data.layouts.LAYOUTS``
(``data.layout``); its constructor takes the data folder and the ``data.layout_options``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segssl.data.image_io import InputProtocol
from segssl.data.readers import DataError, Sample, require_files


class Layout(ABC):
    """Paths, splits and reading of one dataset layout.

    Items: ``ids("train")`` are training items (2-D slices or 3-D volumes, by ``train_ndim``);
    the ids of ``val`` and ``test`` are whole volumes, which evaluation reads.
    """

    #: the data folder (``data.root``)
    root: Path
    #: 2: trains on 2-D slices (evaluates whole volumes slice by slice); 3: on 3-D volumes,
    #: whose patches the training transforms cut. Set per class or per instance.
    train_ndim: int

    @staticmethod
    def check_root(root: str | Path) -> Path:
        """``root`` as a path to an existing folder, else a DataError naming ``data.root``."""
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataError(f"data root not found: {path} (set data.root=PATH)")
        return path

    @abstractmethod
    def list_path(self, split: str) -> Path:
        """The file that lists a split's ids (errors name it); an unknown split is a DataError."""

    def has_split(self, split: str) -> bool:
        """Whether the folder has this split (``test`` falls back to ``val`` when it has not)."""
        return self.list_path(split).is_file()

    @abstractmethod
    def ids(self, split: str) -> list[str]:
        """The split's item ids, in list order, once the split lists are checked together."""

    @abstractmethod
    def path(self, split: str, item_id: str) -> Path:
        """The file an item is read from (the view cache keys training files by it)."""

    def check_files(self, split: str) -> list[Path]:
        """Every file a split names, checked to exist up front: one error lists the missing."""
        return require_files(self.list_path(split), [self.path(split, i) for i in self.ids(split)])

    @abstractmethod
    def split_labeled(self, num_labeled: int) -> tuple[list[str], list[str]]:
        """Training item ids split into labeled and unlabeled by ``data.labeled`` (patients or
        cases, as the layout counts them; all items of one case fall on one side)."""

    @abstractmethod
    def load(self, split: str, item_id: str, *, num_classes: int, require_label: bool) -> Sample:
        """One item, checked (shape, finiteness, label range): a DataError names the file."""

    @classmethod
    @abstractmethod
    def input_protocol(cls, options: Mapping[str, Any], dims: int) -> InputProtocol:
        """How ``predict`` reads a new image file as this layout's training images were read
        (normalisation, axis order, spacing), for a ``dims``-D model, from the run's
        ``data.layout_options`` alone: the data folder need not exist where it runs."""
