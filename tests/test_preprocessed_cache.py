"""The preprocessed cache of ``data=folder``: samples equal to decoding the NIfTI files, memory
maps for training, invalidation by a changed source or option, and nothing trusted after a
pass that failed or was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import segssl.data.layouts.folder as folder_module
import segssl.data.preprocessed as preprocessed
from segssl.data.layouts import make_layout
from tests.test_folder_data import SHAPE, make_folder, write_nifti

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "mydata")


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Names of the NIfTI files decoded (in this process) from now on."""
    seen: list[str] = []
    read = folder_module.read_nifti

    def counting(path, slice_axis):
        seen.append(Path(path).name)
        return read(path, slice_axis)

    monkeypatch.setattr(folder_module, "read_nifti", counting)
    return seen


def layout(root: Path, **options):
    return make_layout("folder", root, workers=1, **options)


def all_items(lay) -> list[tuple[str, str]]:
    return [(s, i) for s in ("train", "val", "test") for i in lay.ids(s)]


def entries(root: Path, case: str) -> list[Path]:
    """Visible (trusted-looking) entry folders of a case."""
    case_dir = root / ".cache" / "folder" / case
    return (
        sorted(p for p in case_dir.iterdir() if not p.name.startswith("."))
        if case_dir.is_dir()
        else []
    )


@pytest.mark.parametrize(
    "options",
    [{"dims": 2}, {"dims": 2, "slice_axis": 0, "normalize": "minmax"}, {"dims": 3}],
    ids=["2d", "2d-axis0-minmax", "3d"],
)
def test_cached_samples_equal_decoded_samples(root, options):
    cached = make_layout("folder", root, workers=3, **options)  # built by a pool of 3 threads
    decoded = layout(root, cache=False, **options)
    assert cached.ids("train") == decoded.ids("train")
    for split, item in all_items(decoded):
        a = cached.load(split, item, num_classes=2, require_label=False)
        b = decoded.load(split, item, num_classes=2, require_label=False)
        assert isinstance(a.image, np.memmap) and not isinstance(b.image, np.memmap)
        assert a.case == b.case and a.spacing == b.spacing
        assert a.image.dtype == b.image.dtype == np.float32
        np.testing.assert_array_equal(a.image, b.image)
        if b.label is None:
            assert a.label is None
        else:
            assert a.label.dtype == b.label.dtype == np.uint8
            np.testing.assert_array_equal(a.label, b.label)


def test_each_case_is_decoded_once_and_training_reads_memory_maps(root, decodes):
    from segssl.data.datamodule import SemiSupervisedDataModule

    def module():
        return SemiSupervisedDataModule(
            root=root, num_classes=2, class_names=["fg"], labeled=1, image_size=16,
            batch_size=2, labeled_batch_size=1, layout="folder", num_workers=0,
            layout_options={"workers": 1},
        )  # fmt: skip

    first = module()
    first.setup("fit")
    # 6 images and 5 labels, each decoded once, though 2-D training reads 24 slices
    assert sorted(decodes) == sorted(
        [f"c{k}.nii.gz" for k in range(6)] + [f"c{k}.nii.gz" for k in (0, 2, 3, 4, 5)]
    )
    items = [item for stream in first._train.values() for item in stream]
    assert len(items) == 24
    # no slice is copied into RAM: every item is a view of the case's memory map
    assert all(isinstance(item["image"], np.memmap) for item in items)
    assert all(isinstance(v["image"], np.memmap) for v in first.volumes("val"))
    decodes.clear()
    second = module()
    second.setup("fit")
    assert decodes == []  # the second run decodes nothing
    batch = next(iter(second.train_dataloader()))[0]
    assert batch["labeled"]["image"].shape == (1, 1, 16, 16)


def test_the_dsaif_view_cache_is_built_from_the_preprocessed_arrays(root, tmp_path, decodes):
    from segssl.data.datamodule import SemiSupervisedDataModule
    from segssl.filters.views import dsaif_views

    layout(root).prepare_all()
    decodes.clear()
    module = SemiSupervisedDataModule(
        root=root, num_classes=2, class_names=["fg"], labeled=1, image_size=16, batch_size=2,
        labeled_batch_size=1, layout="folder", num_workers=1, layout_options={"workers": 1},
        views=dsaif_views(area_threshold=4, cache=True, cache_dir=str(tmp_path / "views")),
    )  # fmt: skip
    module.setup("fit")
    assert decodes == []  # the filtered views come from the memory maps, not from the NIfTI files
    item = module._train["labeled"][3]
    # raw image + Max- and Min-tree views, each under its key
    assert item["image"].shape == item["image_max"].shape == item["image_min"].shape == (1, 24, 20)
    raw = layout(root, cache=False).load("train", item["case"], num_classes=2, require_label=True)
    np.testing.assert_array_equal(item["image"][0], raw.image)
    assert len(list((tmp_path / "views").glob("*.h5"))) == 1
    # other layout options give other images, so other views: never the cached ones
    other = SemiSupervisedDataModule(
        root=root, num_classes=2, class_names=["fg"], labeled=1, image_size=16, batch_size=2,
        labeled_batch_size=1, layout="folder", num_workers=1,
        layout_options={"workers": 1, "normalize": "minmax"},
        views=dsaif_views(area_threshold=4, cache=True, cache_dir=str(tmp_path / "views")),
    )  # fmt: skip
    other.setup("fit")
    assert len(list((tmp_path / "views").glob("*.h5"))) == 2
    minmax = other._train["labeled"][3]
    assert minmax["image"][0].min() >= 0.0 > item["image"][0].min()  # min-max vs z-scored
    assert not all(np.array_equal(minmax[k], item[k]) for k in ("image_max", "image_min"))


def test_a_touched_or_changed_source_invalidates_its_entry_only(root, decodes):
    layout(root, dims=3).prepare_all()
    old_entry = entries(root, "c2")
    assert len(old_entry) == 1 and len(decodes) == 11
    decodes.clear()
    image_path = root / "imagesTr" / "c2.nii.gz"
    stat = image_path.stat()
    os.utime(image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touch: same bytes
    layout(root, dims=3).prepare_all()
    assert sorted(decodes) == ["c2.nii.gz", "c2.nii.gz"]  # image and label of c2, nothing else
    assert len(entries(root, "c2")) == 1 and entries(root, "c2") != old_entry  # old one removed
    # new content is read, not the stale arrays
    write_nifti(image_path, np.full(SHAPE, 7.0, np.float32))
    fresh = layout(root, dims=3, normalize="none").load(
        "train", "c2", num_classes=2, require_label=True
    )
    assert np.all(fresh.image == 7.0)
    # a label added later makes an unlabeled case labeled
    write_nifti(root / "labelsTr" / "c1.nii.gz", np.ones(SHAPE, np.uint8))
    c1 = layout(root, dims=3).load("train", "c1", num_classes=2, require_label=True)
    assert c1.label is not None and c1.label.min() == 1


def test_options_are_part_of_the_key(root):
    zscore = layout(root, dims=3).load("val", "c4", num_classes=2, require_label=True)
    minmax = layout(root, dims=3, normalize="minmax").load(
        "val", "c4", num_classes=2, require_label=True
    )
    assert len(entries(root, "c4")) == 2  # both kept: switching back costs nothing
    assert abs(float(zscore.image.mean())) < 1e-4 and float(minmax.image.min()) == 0.0


def test_cache_false_writes_nothing(root):
    lay = layout(root, cache=False)
    lay.load("train", "c0_slice_0", num_classes=2, require_label=True)
    assert not (root / ".cache").exists()


def test_a_cache_dir_shared_by_two_datasets_keeps_both(root, tmp_path, decodes):
    other = make_folder(tmp_path / "other", seed=1)  # the same case names, other images
    shared = tmp_path / "cache"
    for data in (root, other):
        layout(data, cache_dir=shared).prepare_all()
    assert not (root / ".cache").exists()
    decodes.clear()
    for data in (root, other):  # switching back and forth rebuilds nothing
        lay = layout(data, cache_dir=shared)
        a = lay.load("val", "c4", num_classes=2, require_label=True)
        b = layout(data, cache=False).load("val", "c4", num_classes=2, require_label=True)
        np.testing.assert_array_equal(a.image, b.image)
    assert decodes == ["c4.nii.gz", "c4.nii.gz"] * 2  # only the cache=false reference reads
    assert len(list((shared / "folder" / "c4").iterdir())) == 2


def test_an_error_mid_pass_leaves_nothing_trusted(root, monkeypatch, decodes):
    write_text = preprocessed.write_text

    def failing(path, text):  # meta.json is written last: the arrays of c2 are on disk by now
        if '"case": "c2"' in text:
            raise RuntimeError("injected failure")
        return write_text(path, text)

    monkeypatch.setattr(preprocessed, "write_text", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        layout(root).prepare_all()
    assert entries(root, "c2") == [] and list((root / ".cache/folder/c2").iterdir()) == []
    assert len(entries(root, "c0")) == 1  # cases finished before stay valid
    monkeypatch.setattr(preprocessed, "write_text", write_text)
    decodes.clear()
    again = layout(root)
    again.prepare_all()
    assert "c0.nii.gz" not in decodes and "c2.nii.gz" in decodes
    reference = layout(root, cache=False)
    for item in again.ids("train"):
        a = again.load("train", item, num_classes=2, require_label=False)
        b = reference.load("train", item, num_classes=2, require_label=False)
        np.testing.assert_array_equal(a.image, b.image)


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_a_pass_killed_with_sigkill_leaves_nothing_trusted(root):
    result = run_python(
        f"""
        import os, signal
        import segssl.data.preprocessed as p
        from segssl.data.layouts import make_layout
        write_text = p.write_text
        def dying(path, text):
            if '"case": "c2"' in text:  # c2's arrays are written, its meta.json not yet
                os.kill(os.getpid(), signal.SIGKILL)
            return write_text(path, text)
        p.write_text = dying
        # normalize=none: no MONAI (nor torch) to import, so the subprocess starts in a second
        make_layout("folder", {str(root)!r}, workers=1, normalize="none").prepare_all()
        """
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    leftovers = list((root / ".cache/folder/c2").iterdir())
    assert leftovers and all(p.name.startswith(".") for p in leftovers)  # only a hidden staging
    assert (leftovers[0] / "image.npy").is_file()  # which held c2's arrays, untrusted
    assert len(entries(root, "c0")) == 1  # c0 was complete before the kill and is kept
    lay = layout(root, normalize="none")
    assert lay._store.open(lay._job("c2")) is None
    lay.prepare_all()
    assert list((root / ".cache/folder/c2").iterdir()) == entries(root, "c2")  # staging removed
    a = lay.load("train", "c2_slice_1", num_classes=2, require_label=True)
    b = layout(root, cache=False, normalize="none").load(
        "train", "c2_slice_1", num_classes=2, require_label=True
    )
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
