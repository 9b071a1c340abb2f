"""Tests of the built-in synthetic cardiac phantom and its SSL4MIS-layout writer."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import h5py
import numpy as np
import pytest

from segssl.data import synthetic
from segssl.data.synthetic import (
    BACKGROUND,
    LV,
    MYO,
    RV,
    STAMP_NAME,
    coordinate_grid,
    ensure_synthetic_dataset,
    heart_at_level,
    heart_masks,
    make_phantom_volume,
    paint_background,
    paint_heart,
    sample_anatomy,
    slice_label,
)
from tests.conftest import SMALL_SYNTHETIC

MEDIUM = dict(
    num_train_patients=6,
    num_val_patients=2,
    num_test_patients=2,
    image_size=64,
    slices_per_volume=8,
    seed=0,
)


def read_case(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image and label arrays of one h5 case file."""
    with h5py.File(path, "r") as handle:
        return handle["image"][()], handle["label"][()]


def read_ids(path: Path) -> list[str]:
    """Non-empty lines of a list file."""
    return [line for line in path.read_text().splitlines() if line]


def all_arrays(root: Path) -> dict[str, bytes]:
    """Raw bytes of every array in every h5 file under ``root/data``, keyed by path."""
    out = {}
    for path in sorted((root / "data").rglob("*.h5")):
        image, label = read_case(path)
        rel = str(path.relative_to(root))
        out[rel + ":image"], out[rel + ":label"] = image.tobytes(), label.tobytes()
    return out


def mtimes(root: Path) -> dict[str, int]:
    """Modification times (ns) of every file under ``root``."""
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "synthetic"
    return ensure_synthetic_dataset(root, **SMALL_SYNTHETIC)


@pytest.fixture(scope="module")
def medium_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("medium") / "synthetic", **MEDIUM)


def test_layout_and_list_files(small_root: Path) -> None:
    train = read_ids(small_root / "train.list")
    assert train == [
        "patient001_frame01",
        "patient001_frame02",
        "patient002_frame01",
        "patient002_frame02",
    ]
    assert read_ids(small_root / "val.list") == ["patient003_frame01", "patient003_frame02"]
    assert read_ids(small_root / "test.list") == ["patient004_frame01", "patient004_frame02"]
    slices = read_ids(small_root / "train_slices.list")
    assert slices == [f"{case}_slice_{k}" for case in train for k in range(1, 5)]
    stored_slices = sorted(p.stem for p in (small_root / "data" / "slices").glob("*.h5"))
    assert stored_slices == sorted(slices)  # training cases only
    volumes = sorted(p.stem for p in (small_root / "data").glob("*.h5"))
    assert volumes == sorted(
        train + read_ids(small_root / "val.list") + ["patient004_frame01", "patient004_frame02"]
    )
    stamp = json.loads((small_root / STAMP_NAME).read_text())
    assert stamp["version"] == synthetic.GENERATOR_VERSION and stamp["params"] == SMALL_SYNTHETIC


def test_volume_files_have_acdc_format(small_root: Path) -> None:
    for path in (small_root / "data").glob("*.h5"):
        with h5py.File(path, "r") as handle:
            assert set(handle.keys()) == {"image", "label"}
            assert handle["image"].compression == "gzip" == handle["label"].compression
            spacing = handle.attrs["spacing"]
            image, label = handle["image"][()], handle["label"][()]
        assert image.shape == label.shape == (4, 32, 32)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.min() == 0.0 and image.max() == 1.0  # min-max per volume
        assert set(np.unique(label)) <= {BACKGROUND, RV, MYO, LV}
        assert spacing.shape == (3,) and spacing[0] == 10.0 and spacing[1] == spacing[2]
        assert 144 / (1.2 * 32) <= spacing[1] <= 144 / (0.8 * 32)  # 144 mm FOV, zoom 0.8..1.2


def test_slices_equal_volume_rows(small_root: Path) -> None:
    for case in read_ids(small_root / "train.list"):
        image, label = read_case(small_root / "data" / f"{case}.h5")
        for k in range(1, image.shape[0] + 1):
            s_image, s_label = read_case(small_root / "data" / "slices" / f"{case}_slice_{k}.h5")
            assert s_image.shape == (32, 32)
            np.testing.assert_array_equal(s_image, image[k - 1])
            np.testing.assert_array_equal(s_label, label[k - 1])


def test_all_classes_in_most_mid_slices(medium_root: Path) -> None:
    volumes = sorted((medium_root / "data").glob("*.h5"))
    present = [
        set(np.unique(label[k])) == {BACKGROUND, RV, MYO, LV}
        for label in (read_case(path)[1] for path in volumes)
        for k in (2, 3, 4)
    ]
    assert np.mean(present) >= 0.8


def test_anatomy_changes_base_to_apex_and_ed_to_es(medium_root: Path) -> None:
    for case in read_ids(medium_root / "train.list"):
        label = read_case(medium_root / "data" / f"{case}.h5")[1]
        lv_area = (label == LV).sum(axis=(1, 2))
        assert lv_area[0] > lv_area[-1] > 0  # shrinks towards the apex, still present
        assert (label[-1] == RV).sum() == 0  # the RV is gone at the apex
        assert (label[0] == RV).sum() > 0
    for patient in range(1, MEDIUM["num_train_patients"] + 1):
        ed, es = (
            read_case(medium_root / "data" / f"patient{patient:03d}_frame0{f}.h5")[1]
            for f in (1, 2)
        )
        assert (es == LV).sum() < (ed == LV).sum()  # ES-like frame: smaller LV cavity


def test_intensity_alone_does_not_separate_lv_from_rv(medium_root: Path) -> None:
    images, labels = zip(*(read_case(p) for p in (medium_root / "data").glob("*.h5")), strict=True)
    image, label = np.concatenate(images), np.concatenate(labels)
    lv, rv, bg = image[label == LV], image[label == RV], image[label == BACKGROUND]
    assert abs(np.median(lv) - np.median(rv)) < 0.5 * lv.std()
    assert (bg > np.median(lv)).sum() > 0.1 * lv.size  # blood-bright background exists


def test_labels_match_painted_structures() -> None:
    anatomy = sample_anatomy(np.random.default_rng(7))
    y, x = coordinate_grid(64)
    masks = heart_masks(y, x, heart_at_level(anatomy.heart, 0.3))
    clean = paint_background(y, x, anatomy, np.zeros((64, 64)), 0.3)
    paint_heart(clean, masks, anatomy.contrast)
    label = slice_label(masks)
    contrast = anatomy.contrast
    assert np.all(clean[label == RV] == contrast.rv_blood)
    assert np.all(clean[label == MYO] == contrast.myo)
    assert set(np.unique(clean[label == LV])) <= {contrast.blood, contrast.myo}  # + papillary
    assert (label == RV).any() and (label == MYO).any() and (label == LV).any()


def test_generation_is_deterministic_and_seed_sensitive(tmp_path: Path) -> None:
    first = all_arrays(ensure_synthetic_dataset(tmp_path / "a", **SMALL_SYNTHETIC))
    second = all_arrays(ensure_synthetic_dataset(tmp_path / "b", **SMALL_SYNTHETIC))
    assert first == second
    other = all_arrays(ensure_synthetic_dataset(tmp_path / "c", **{**SMALL_SYNTHETIC, "seed": 4}))
    assert other.keys() == first.keys()
    assert all(other[key] != first[key] for key in first if key.endswith(":image"))


def test_make_phantom_volume_is_deterministic() -> None:
    a = make_phantom_volume(np.random.default_rng(1), 40, 5, 1)
    b = make_phantom_volume(np.random.default_rng(1), 40, 5, 1)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[0].shape == a[1].shape == (5, 40, 40)
    with pytest.raises(ValueError, match="frame"):
        make_phantom_volume(np.random.default_rng(1), 40, 5, 3)


def test_patients_disjoint_across_splits(medium_root: Path) -> None:
    def patients(name: str) -> set[str]:
        return {case.split("_")[0] for case in read_ids(medium_root / name)}

    train, val, test = patients("train.list"), patients("val.list"), patients("test.list")
    assert len(train) == 6 and len(val) == 2 and len(test) == 2
    assert not (train & val or train & test or val & test)
    assert patients("train_slices.list") == train


def test_matching_stamp_is_reused_without_rewriting(small_root: Path) -> None:
    before = mtimes(small_root)
    assert ensure_synthetic_dataset(small_root, **SMALL_SYNTHETIC) == small_root
    assert mtimes(small_root) == before


def test_parameter_change_regenerates(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset(tmp_path / "ds", **SMALL_SYNTHETIC)
    ensure_synthetic_dataset(root, **{**SMALL_SYNTHETIC, "slices_per_volume": 3})
    assert read_case(root / "data" / "patient001_frame01.h5")[0].shape == (3, 32, 32)
    assert len(read_ids(root / "train_slices.list")) == 2 * 2 * 3
    assert not (root / "data" / "slices" / "patient001_frame01_slice_4.h5").exists()
    assert json.loads((root / STAMP_NAME).read_text())["params"]["slices_per_volume"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds.")] == [".ds.lock"]


def test_half_written_folder_is_not_taken_as_complete(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "data" / "slices").mkdir(parents=True)
    (root / "data" / "patient001_frame01.h5").write_bytes(b"truncated")
    (root / "train.list").write_text("patient001_frame01\n")
    ensure_synthetic_dataset(root, **SMALL_SYNTHETIC)
    assert read_case(root / "data" / "patient001_frame01.h5")[0].shape == (4, 32, 32)
    assert (root / STAMP_NAME).is_file()


def test_stamp_with_missing_files_is_regenerated(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset(tmp_path / "ds", **SMALL_SYNTHETIC)
    (root / "data" / "patient002_frame02.h5").unlink()
    ensure_synthetic_dataset(root, **SMALL_SYNTHETIC)
    assert (root / "data" / "patient002_frame02.h5").is_file()


def test_foreign_folder_is_refused_and_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "README.md").write_text("precious")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        ensure_synthetic_dataset(root, **SMALL_SYNTHETIC)
    assert [p.name for p in root.iterdir()] == ["README.md"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_train_patients", 0),
        ("num_val_patients", -1),
        ("image_size", 8),
        ("slices_per_volume", 0),
        ("seed", 1.5),
    ],
)
def test_invalid_arguments_name_the_argument(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        ensure_synthetic_dataset(tmp_path / "ds", **{**SMALL_SYNTHETIC, name: value})
    assert not (tmp_path / "ds").exists()


def test_empty_held_out_split_writes_no_list(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset(tmp_path / "ds", **{**SMALL_SYNTHETIC, "num_test_patients": 0})
    assert not (root / "test.list").exists() and (root / "val.list").is_file()


def test_concurrent_writers_leave_one_complete_dataset(tmp_path: Path) -> None:
    root = tmp_path / "race"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=ensure_synthetic_dataset, args=(root,), kwargs=SMALL_SYNTHETIC)
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    reference = all_arrays(ensure_synthetic_dataset(tmp_path / "reference", **SMALL_SYNTHETIC))
    assert all_arrays(root) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".race.lock",
        ".reference.lock",
        "race",
        "reference",
    ]
