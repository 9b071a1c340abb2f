"""Every dataset layout implements the declared ``Layout`` interface, and ``predict`` asks the
layout (not a table of its own) how new images are read: a layout registered by name alone is
read by training, ``test`` and ``predict`` with no other edit."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from segssl.commands.predict import input_protocol
from segssl.commands.test import check_split
from segssl.data.image_io import InputProtocol
from segssl.data.layouts import LAYOUTS, Layout, make_layout
from segssl.data.readers import DataError, Sample

INTENSITY = {"low": -100.0, "high": 300.0, "mean": 40.0, "std": 80.0}


def model(dims: int) -> SimpleNamespace:
    """What ``input_protocol`` reads of a method: its evaluator's mode."""
    return SimpleNamespace(evaluator=SimpleNamespace(mode="slices" if dims == 2 else "volume"))


def run(layout: str, **options) -> dict:
    return {"data": {"layout": layout, "layout_options": options}}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_registered_layout_implements_the_whole_interface(name: str) -> None:
    cls = LAYOUTS[name]
    assert issubclass(cls, Layout) and not inspect.isabstract(cls)


def test_a_layout_missing_a_member_is_refused_when_built() -> None:
    class NoLoad(Layout):
        train_ndim = 3

        def list_path(self, split: str) -> Path:
            return Path(f"{split}.list")

        def ids(self, split: str) -> list[str]:
            return []

        def path(self, split: str, item_id: str) -> Path:
            return Path(item_id)

        def split_labeled(self, num_labeled: int) -> tuple[list[str], list[str]]:
            return [], []

        @classmethod
        def input_protocol(cls, options, dims: int) -> InputProtocol:
            return InputProtocol(dims, "none", "none", (0, 1, 2))

    with pytest.raises(TypeError, match="load"):
        NoLoad()


SPACING = {"target_spacing": [1, 1, 2]}


@pytest.mark.parametrize(
    ("layout", "options", "dims", "expected"),
    [
        ("ssl4mis", {}, 2, ("minmax", "none", (2, 1, 0), None)),
        ("ssl4mis", {}, 3, ("minmax", "none", (0, 1, 2), None)),
        ("uamt", {"val_cases": 2}, 3, ("zscore", "none", (0, 1, 2), None)),
        ("folder", {}, 2, ("zscore", "zscore", (2, 0, 1), None)),
        (
            "folder",
            {"slice_axis": 0, "normalize": "minmax"},
            2,
            ("minmax", "minmax", (0, 1, 2), None),
        ),
        (
            "folder",
            {"slice_axis": 1, **SPACING},
            2,
            ("zscore", "zscore", (1, 0, 2), (1.0, 1.0, 2.0)),
        ),
        (
            "folder",
            {"slice_axis": 0, **SPACING},
            3,
            ("zscore", "zscore", (0, 1, 2), (1.0, 1.0, 2.0)),
        ),
    ],
)
def test_predict_reads_input_as_the_layout_says(layout, options, dims, expected) -> None:
    """The values predict's own per-layout table gave before the layouts declared them."""
    protocol = input_protocol(run(layout, **options), model(dims))
    got = (protocol.normalize, protocol.h5_normalize, protocol.nifti_axes, protocol.target_spacing)
    assert protocol.dims == dims and got == expected


def test_predict_overrides_and_ct_numbers_pass_through() -> None:
    ct = input_protocol(run("folder", normalize="ct", intensity=INTENSITY), model(2))
    assert (ct.normalize, ct.intensity) == ("ct", INTENSITY)
    given = input_protocol(run("ssl4mis"), model(2), normalize="zscore", axes=[0, 2, 1])
    assert (given.normalize, given.h5_normalize, given.nifti_axes) == (
        "zscore",
        "zscore",
        (0, 2, 1),
    )
    with pytest.raises(ValueError, match="normalize=minmax"):
        input_protocol(run("mine"), model(2), normalize="minmax")  # mode bad: normalize=max?
    unknown = input_protocol(run("mine"), model(3), normalize="none", axes=[2, 1, 0])
    assert (unknown.normalize, unknown.nifti_axes) == ("none", (2, 1, 0))


class OneCase(Layout):
    """A layout of one h5 volume per case, registered by name alone in the test below."""

    train_ndim = 3

    def __init__(self, root: str | Path, scale: float = 1.0) -> None:
        self.root, self.scale = self.check_root(root), scale

    def list_path(self, split: str) -> Path:
        return self.root / f"{split}.txt"

    def ids(self, split: str) -> list[str]:
        return self.list_path(split).read_text().split()

    def path(self, split: str, item_id: str) -> Path:
        return self.root / f"{item_id}.h5"

    def split_labeled(self, num_labeled: int) -> tuple[list[str], list[str]]:
        ids = self.ids("train")
        return ids[:num_labeled], ids[num_labeled:]

    def load(self, split: str, item_id: str, *, num_classes: int, require_label: bool) -> Sample:
        with h5py.File(self.path(split, item_id)) as handle:
            return Sample(item_id, handle["image"][()] * self.scale, handle["label"][()])

    @classmethod
    def input_protocol(cls, options, dims: int) -> InputProtocol:
        return InputProtocol(dims, "minmax", "zscore", (1, 2, 0))


def test_a_new_layout_needs_only_its_class_and_a_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(LAYOUTS, "one_case", OneCase)
    for case in ("a", "b"):
        with h5py.File(tmp_path / f"{case}.h5", "w") as handle:
            handle["image"] = np.ones((2, 3, 4), np.float32)
            handle["label"] = np.zeros((2, 3, 4), np.uint8)
    (tmp_path / "train.txt").write_text("a\nb\n")
    layout = make_layout("one_case", tmp_path, scale=2.0)
    assert layout.check_files("train") == [tmp_path / "a.h5", tmp_path / "b.h5"]
    assert layout.load("train", "a", num_classes=2, require_label=True).image.max() == 2.0
    assert layout.has_split("train") and not layout.has_split("val")
    protocol = input_protocol(run("one_case"), model(2))
    assert (protocol.normalize, protocol.nifti_axes) == ("minmax", (1, 2, 0))
    datamodule = SimpleNamespace(layout=layout, layout_name="one_case")
    check_split(datamodule, "train")  # trains on volumes: its train split is evaluated as any
    with pytest.raises(DataError, match=r"split 'val' not found: .*val\.txt"):
        check_split(datamodule, "val")
    with pytest.raises(DataError, match="do not fit layout 'one_case'"):
        make_layout("one_case", tmp_path, spacing=[1, 1, 1])


def test_a_slice_layout_refuses_split_train_in_test(tmp_path: Path) -> None:
    (tmp_path / "train_slices.list").write_text("patient001_frame01_slice_0\n")
    layout = make_layout("ssl4mis", tmp_path)
    with pytest.raises(DataError, match="trains on 2-D slices"):
        check_split(SimpleNamespace(layout=layout, layout_name="ssl4mis"), "train")
