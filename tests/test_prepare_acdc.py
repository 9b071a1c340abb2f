"""The ACDC converter: official NIfTI folders -> SSL4MIS h5 layout, checked by round trips.

Fake official folders are written from known volumes (real SSL4MIS h5 volumes when the shared
data is present, tiny random ones otherwise), converted back, and compared with the originals.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from segssl.data.image_io import read_h5_sample
from segssl.data.prepare_acdc import (
    STANDARD_SPLIT,
    TEST_PATIENTS,
    TRAIN_PATIENTS,
    VAL_PATIENTS,
    prepare_acdc,
)
from segssl.data.readers import DataError, read_list
from tests.conftest import shared_data

SPACING_XYZ = (1.5625, 1.40625, 10.0)  # anisotropic in-plane too, so a swap of x/y shows
RAW_OFFSET, RAW_RANGE = 37, 1200  # raw MRI-like int16 intensities
ED, ES = 1, 12  # official frame numbers; stored as frame01 / frame02
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_acdc.py"

Frames = dict[int, tuple[np.ndarray, np.ndarray]]  # official frame -> (image, label), (D, H, W)


def write_official_patient(
    root: Path, number: int, frames: Frames, ed: int = ED, es: int = ES
) -> Path:
    """A patient folder as in the official zip: Info.cfg, frames and _gt in (x, y, z) order."""
    folder = root / f"patient{number:03d}"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(
        f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n"
    )
    affine = np.diag([*SPACING_XYZ, 1.0])
    for frame, (image, label) in frames.items():
        raw = np.round(image * RAW_RANGE).astype(np.int16) + RAW_OFFSET
        prefix = folder / f"patient{number:03d}_frame{frame:02d}"
        nib.save(nib.Nifti1Image(raw.transpose(2, 1, 0), affine), f"{prefix}.nii.gz")
        gt = label.transpose(2, 1, 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(gt, affine), f"{prefix}_gt.nii.gz")
    return folder


def random_frames(rng: np.random.Generator, shape: tuple[int, int, int]) -> Frames:
    """ED and ES frames of random [0, 1] images (min 0, max 1 exactly) and labels 0..3."""
    frames: Frames = {}
    for frame in (ED, ES):
        image = rng.random(shape)
        image.flat[0], image.flat[-1] = 0.0, 1.0
        frames[frame] = (image.astype(np.float32), rng.integers(0, 4, shape).astype(np.uint8))
    return frames


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """image, label and attributes of an h5 file."""
    with h5py.File(path, "r") as handle:
        return handle["image"][()], handle["label"][()], dict(handle.attrs)


def assert_same_volume(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    """The converted file holds the original volume (image up to int16 quantisation)."""
    got_image, got_label, attrs = read_volume(path)
    assert got_image.dtype == np.float32 and got_label.dtype == np.uint8
    assert got_image.shape == image.shape
    np.testing.assert_allclose(got_image, image, atol=0.6 / RAW_RANGE)
    assert got_image.min() == 0.0 and got_image.max() == 1.0
    np.testing.assert_array_equal(got_label, label)
    np.testing.assert_allclose(attrs["spacing"], SPACING_XYZ[::-1])


def assert_slices_are_rows(data_dir: Path, case: str) -> None:
    """slice_K files equal volume[K - 1], for K = 1..D."""
    image, label, _ = read_volume(data_dir / f"{case}.h5")
    for k in range(1, image.shape[0] + 1):
        s_image, s_label, _ = read_volume(data_dir / "slices" / f"{case}_slice_{k}.h5")
        np.testing.assert_array_equal(s_image, image[k - 1])
        np.testing.assert_array_equal(s_label, label[k - 1])
    assert not (data_dir / "slices" / f"{case}_slice_{image.shape[0] + 1}.h5").exists()


def leftovers(parent: Path) -> list[str]:
    """Staging folders the converter left beside its output (there should be none): the hidden
    siblings of ``segssl.utils.atomic.staged_folder``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- synthetic (no data needed)


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Frames]]:
    """Official-style folders for one train, val, test and non-benchmark patient, nested."""
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    layout = {99: "training", 28: "training", 1: "training", 101: "testing/sub"}
    shapes = {99: (3, 7, 5), 28: (4, 6, 5), 1: (2, 5, 6), 101: (3, 5, 5)}
    patients = {n: random_frames(rng, shapes[n]) for n in layout}
    for number, where in layout.items():
        write_official_patient(root / where, number, patients[number])
    return root, patients


@pytest.fixture(scope="module")
def synthetic_out(
    synthetic_raw: tuple[Path, dict[int, Frames]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, int]]:
    """The synthetic raw folders converted once."""
    out = tmp_path_factory.mktemp("converted") / "ACDC"
    return out, prepare_acdc(synthetic_raw[0], out)


def test_synthetic_volumes_round_trip(synthetic_raw, synthetic_out) -> None:
    out, _ = synthetic_out
    for number, frames in synthetic_raw[1].items():
        for frame, stored in ((ED, "frame01"), (ES, "frame02")):
            path = out / "data" / f"patient{number:03d}_{stored}.h5"
            assert_same_volume(path, *frames[frame])
            attrs = read_volume(path)[2]
            assert attrs["source_frame"] == frame
            assert attrs["phase"] == ("ED" if frame == ED else "ES")


def test_synthetic_lists_and_slices(synthetic_out) -> None:
    out, counts = synthetic_out
    frames = ("frame01", "frame02")
    assert read_list(out / "train.list") == [f"patient099_{f}" for f in frames]
    assert read_list(out / "val.list") == [f"patient028_{f}" for f in frames]
    assert read_list(out / "test.list") == [f"patient001_{f}" for f in frames]
    assert read_list(out / "extra.list") == [f"patient101_{f}" for f in frames]
    slices = read_list(out / "train_slices.list")
    assert slices == [f"patient099_{f}_slice_{k}" for f in frames for k in (1, 2, 3)]
    all_slices = read_list(out / "all_slices.list")
    assert all_slices == sorted(all_slices) and len(all_slices) == 6 + 8 + 4  # no extra volumes
    assert counts == {
        "train_slices.list": 6,
        "train.list": 2,
        "val.list": 2,
        "test.list": 2,
        "all_slices.list": 18,
        "extra.list": 2,
    }
    written = sorted(p.stem for p in (out / "data" / "slices").iterdir())
    assert written == sorted(slices)  # slice files for training patients only
    for case in read_list(out / "train.list"):
        assert_slices_are_rows(out / "data", case)
    assert leftovers(out.parent) == []


def test_reader_accepts_output(synthetic_out) -> None:
    out, _ = synthetic_out
    sample = read_h5_sample(out / "data" / "patient028_frame01.h5", num_classes=4, expected_ndim=3)
    assert sample.spacing == pytest.approx(SPACING_XYZ[::-1])
    read_h5_sample(out / "data" / "slices" / "patient099_frame02_slice_3.h5", num_classes=4)


def test_all_slices_option(synthetic_raw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_acdc(synthetic_raw[0], out, all_slices=True)
    assert_slices_are_rows(out / "data", "patient001_frame02")
    assert_slices_are_rows(out / "data", "patient101_frame01")


def test_refuses_non_empty_output(synthetic_raw, tmp_path: Path) -> None:
    raw = synthetic_raw[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.list").write_text("stale\n")
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        prepare_acdc(raw, out)
    assert (out / "train.list").read_text() == "stale\n"
    prepare_acdc(raw, out, overwrite=True)
    assert read_list(out / "train.list")[0] == "patient099_frame01"
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(DataError, match="refusing to overwrite.*notes.txt"):
        prepare_acdc(raw, out, overwrite=True)
    with pytest.raises(DataError, match="must not contain the raw data"):
        prepare_acdc(raw, raw.parent, overwrite=True)
    assert leftovers(tmp_path) == []


def test_empty_output_folder_is_used(synthetic_raw, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    prepare_acdc(synthetic_raw[0], out)
    assert (out / "data" / "patient001_frame01.h5").is_file()


def one_patient_raw(tmp_path: Path, number: int = 99, **info: int) -> Path:
    """A raw folder with a single small patient; returns its patient folder."""
    frames = random_frames(np.random.default_rng(1), (2, 4, 3))
    return write_official_patient(tmp_path / "raw" / "training", number, frames, **info)


def assert_fails_cleanly(tmp_path: Path, match: str) -> None:
    """Conversion raises a DataError matching ``match`` and leaves nothing behind."""
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match):
        prepare_acdc(tmp_path / "raw", out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_info_cfg(tmp_path: Path) -> None:
    (one_patient_raw(tmp_path) / "Info.cfg").unlink()
    assert_fails_cleanly(tmp_path, r"missing .*patient099/Info\.cfg")


def test_info_cfg_without_es(tmp_path: Path) -> None:
    info = one_patient_raw(tmp_path) / "Info.cfg"
    info.write_text("ED: 1\nGroup: NOR\n")
    assert_fails_cleanly(tmp_path, r"Info\.cfg: expected a line 'ES: <frame number>'")


def test_missing_frame(tmp_path: Path) -> None:
    one_patient_raw(tmp_path, es=13)  # Info.cfg names a frame that is not there
    assert_fails_cleanly(tmp_path, r"missing frame file .*patient099_frame13\.nii\.gz")


def test_missing_ground_truth(tmp_path: Path) -> None:
    (one_patient_raw(tmp_path) / "patient099_frame12_gt.nii.gz").unlink()
    assert_fails_cleanly(tmp_path, r"missing frame file .*patient099_frame12_gt\.nii\.gz")


def test_shape_mismatch(tmp_path: Path) -> None:
    gt = one_patient_raw(tmp_path) / "patient099_frame01_gt.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 4, 2), np.uint8), np.eye(4)), gt)
    assert_fails_cleanly(tmp_path, r"patient099_frame01_gt\.nii\.gz: shape \(5, 4, 2\) != image")


def test_labels_out_of_range(tmp_path: Path) -> None:
    gt = one_patient_raw(tmp_path) / "patient099_frame12_gt.nii.gz"
    label = np.zeros((3, 4, 2), np.uint8)
    label[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(label, np.eye(4)), gt)
    assert_fails_cleanly(tmp_path, r"patient099_frame12_gt\.nii\.gz: labels outside 0\.\.3: \[7\]")


def test_no_patients(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    assert_fails_cleanly(tmp_path, "no patientXXX folders")


def test_duplicate_patient(tmp_path: Path) -> None:
    one_patient_raw(tmp_path)
    write_official_patient(
        tmp_path / "raw" / "copy", 99, random_frames(np.random.default_rng(2), (2, 3, 3))
    )
    assert_fails_cleanly(tmp_path, "patient099 found twice")


def load_script():
    """The thin command-line wrapper, imported from its file."""
    spec = importlib.util.spec_from_file_location("prepare_acdc_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    one_patient_raw(tmp_path)
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    assert script.main([raw, out, "--quiet"]) == 0
    assert "train.list: 2" in capsys.readouterr().out
    assert script.main([raw, out]) == 1
    assert "not empty" in capsys.readouterr().err
    assert script.main([raw, out, "--overwrite"]) == 0
    assert "patient099 (train)" in capsys.readouterr().out


def test_standard_split_is_a_partition() -> None:
    assert [len(p) for p in STANDARD_SPLIT.values()] == [70, 10, 20]
    everyone = sorted(TRAIN_PATIENTS + VAL_PATIENTS + TEST_PATIENTS)
    assert everyone == list(range(1, 101))


# ---------------------------------------------------------------- real ACDC (shared data)


def test_standard_split_matches_ssl4mis_lists() -> None:
    root = shared_data("ACDC")
    slices = read_list(root / "train_slices.list")
    order = list(dict.fromkeys(int(s[7:10]) for s in slices))
    assert tuple(order) == TRAIN_PATIENTS
    val = read_list(root / "val.list")
    assert tuple(dict.fromkeys(int(v[7:10]) for v in val)) == VAL_PATIENTS


def real_frames(root: Path, number: int) -> Frames:
    """Both frames of a real patient: the val volumes as stored, training ones from slices."""
    frames: Frames = {}
    for frame, stored in ((ED, "frame01"), (ES, "frame02")):
        case = f"patient{number:03d}_{stored}"
        volume = root / "data" / f"{case}.h5"
        if volume.is_file():
            image, label, _ = read_volume(volume)
        else:
            paths = sorted(
                (root / "data" / "slices").glob(f"{case}_slice_*.h5"),
                key=lambda p: int(p.stem.rsplit("_", 1)[1]),
            )
            rows = [read_volume(p)[:2] for p in paths]
            image, label = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
        frames[frame] = (image, label)
    return frames


REAL_PATIENTS = {99: "training", 38: "training", 28: "testing"}  # 2 train (in list order), 1 val


@pytest.fixture(scope="module")
def real_round_trip(tmp_path_factory: pytest.TempPathFactory):
    """Real volumes written as official folders and converted back."""
    root = shared_data("ACDC")
    raw = tmp_path_factory.mktemp("real_raw")
    originals = {n: real_frames(root, n) for n in REAL_PATIENTS}
    for number, where in REAL_PATIENTS.items():
        write_official_patient(raw / "ACDC" / "database" / where, number, originals[number])
    out = tmp_path_factory.mktemp("real_out") / "ACDC"
    prepare_acdc(raw, out)
    return root, originals, out


def test_real_volumes_round_trip(real_round_trip) -> None:
    _, originals, out = real_round_trip
    for number, frames in originals.items():
        for frame, stored in ((ED, "frame01"), (ES, "frame02")):
            assert_same_volume(out / "data" / f"patient{number:03d}_{stored}.h5", *frames[frame])


def test_real_lists_follow_ssl4mis(real_round_trip) -> None:
    root, _, out = real_round_trip
    chosen = tuple(f"patient{n:03d}" for n in REAL_PATIENTS)
    standard_slices = [s for s in read_list(root / "train_slices.list") if s.startswith(chosen)]
    slices = read_list(out / "train_slices.list")
    patient_order = list(dict.fromkeys(s[:10] for s in slices))
    assert patient_order == ["patient099", "patient038"]  # SSL4MIS order, not sorted
    assert patient_order == list(dict.fromkeys(s[:10] for s in standard_slices))
    assert sorted(slices) == sorted(standard_slices)
    standard_volumes = [v for v in read_list(root / "train.list") if v.startswith(chosen)]
    assert read_list(out / "train.list") == standard_volumes
    assert read_list(out / "val.list") == ["patient028_frame01", "patient028_frame02"]
    standard_all = [s for s in read_list(root / "all_slices.list") if s.startswith(chosen)]
    assert read_list(out / "all_slices.list") == standard_all
    assert not (out / "test.list").exists() and not (out / "extra.list").exists()
    assert_slices_are_rows(out / "data", "patient099_frame02")
    assert not list((out / "data" / "slices").glob("patient028_*"))
