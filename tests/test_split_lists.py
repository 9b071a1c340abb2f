"""Split lists are checked before anything is read: an id listed twice in one list, or a case in
two of train/val/test, is refused naming the case and the list files, for every layout (SSL4MIS
h5, UA-MT LA, NIfTI folder) and for ``plan``. Before, such lists were trained on as given: a
duplicate counted twice ("2 patients" with one), an overlap leaked into checkpoint selection."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segssl.commands.plan import main as plan_main
from segssl.data.layouts import make_layout
from segssl.data.readers import DataError, check_split_lists
from segssl.data.synthetic import ensure_synthetic_dataset
from segssl.planning.fingerprint import fingerprint
from segssl.planning.planner import make_plan
from tests.conftest import SHARED_DATA, TINY
from tests.test_folder_data import make_folder, setup_fit
from tests.test_la import fake_la, la_datamodule
from tests.test_plan import make_dataset


def append(path: Path, line: str) -> int:
    """Add ``line`` at the end of a list file; returns its line number."""
    text = path.read_text() if path.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(text + line + "\n")
    return len(path.read_text().splitlines())


def refusal(err: pytest.ExceptionInfo, case: str, *lists: Path) -> str:
    """The message, checked to name the case and every list file."""
    message = str(err.value)
    assert repr(case) in message, message
    for path in lists:
        assert str(path) in message, message
    return message


# -- the check itself --------------------------------------------------------------------------
def test_blank_lines_and_whitespace_are_ignored_and_lines_are_counted(tmp_path):
    train, val = tmp_path / "train.list", tmp_path / "val.list"
    train.write_text("a\n\n  b  \n\t\n")
    val.write_text("c\n")
    check_split_lists({"train": train, "val": val, "test": tmp_path / "absent.list"})
    (tmp_path / "empty.list").write_text("\n")  # empty lists are read_list's to refuse
    check_split_lists({"train": train, "val": tmp_path / "empty.list"})
    train.write_text("a\n\n  b\n b \n")
    with pytest.raises(DataError, match=r"'b' is listed twice \(lines 3 and 4\)") as err:
        check_split_lists({"train": train, "val": val})
    refusal(err, "b", train)
    train.write_text("a\n\n  b\n")
    val.write_text("c\n\n a\n")
    with pytest.raises(DataError, match=r"train\.list \(line 1: a\) and .*val\.list \(line 3: a\)"):
        check_split_lists({"train": train, "val": val})


def test_a_list_under_two_split_names_is_read_once(tmp_path):
    """UA-MT's validation cases are the tail of train.list: not an overlap with itself."""
    train = tmp_path / "train.list"
    train.write_text("a\nb\n")
    check_split_lists({"train": train, "val": train})


def test_several_shared_cases_are_counted(tmp_path):
    (tmp_path / "train.list").write_text("a\nb\nc\n")
    (tmp_path / "test.list").write_text("c\nb\n")
    lists = {s: tmp_path / f"{s}.list" for s in ("train", "test")}
    shared = r"case 'c' is in two split lists.*\(2 cases of test\.list in all\)"
    with pytest.raises(DataError, match=shared):
        check_split_lists(lists)


# -- SSL4MIS (ACDC, synthetic): slices in train_slices.list, volumes in val/test, by patient -----
@pytest.fixture(scope="module")
def clean_ssl4mis(tmp_path_factory) -> Path:
    # patients 001-003 train (2 slices a volume), 004 val, 005 test
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("ssl4mis") / "data", 3, 1, 1, 24, 2)


@pytest.fixture
def ssl4mis(clean_ssl4mis: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(clean_ssl4mis, tmp_path / "data"))


def ssl4mis_fit(root: Path) -> None:
    from segssl.data.datamodule import SemiSupervisedDataModule

    SemiSupervisedDataModule(
        root=root, num_classes=4, class_names=["RV", "Myo", "LV"], labeled=1, image_size=24,
        batch_size=2, labeled_batch_size=1, num_workers=0,
    ).setup("fit")  # fmt: skip


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("train_slices.list", "patient002_frame01_slice_1"),
        ("val.list", "patient004_frame02"),
        ("test.list", "patient005_frame01"),
    ],
)
def test_ssl4mis_id_listed_twice_is_refused(ssl4mis, name, line):
    lines = (ssl4mis / name).read_text().splitlines()
    first, again = lines.index(line) + 1, append(ssl4mis / name, line)
    with pytest.raises(DataError, match=rf"is listed twice \(lines {first} and {again}\)") as err:
        ssl4mis_fit(ssl4mis)
    refusal(err, line, ssl4mis / name)


@pytest.mark.parametrize(
    ("first", "second", "volume", "patient"),
    [
        ("train_slices.list", "val.list", "patient001_frame02", "patient001"),
        ("train_slices.list", "test.list", "patient003_frame01", "patient003"),
        ("val.list", "test.list", "patient004_frame01", "patient004"),
    ],
)
def test_ssl4mis_patient_in_two_lists_is_refused(ssl4mis, first, second, volume, patient):
    """A patient's slices in training and one of its volumes in val.list (another frame, even)
    is a leak: lists are compared by patient, not by id."""
    append(ssl4mis / second, volume)
    with pytest.raises(DataError, match=rf"patient '{patient}' is in two split lists") as err:
        ssl4mis_fit(ssl4mis)
    refusal(err, patient, ssl4mis / first, ssl4mis / second)


def test_ssl4mis_train_run_with_a_leaking_val_list_trains_nothing(run_task, ssl4mis):
    append(ssl4mis / "val.list", "patient002_frame01")
    with pytest.raises(DataError, match="patient 'patient002' is in two split lists") as err:
        run_task([*TINY, f"data.root={ssl4mis}", "data.synthetic=null"])
    refusal(err, "patient002", ssl4mis / "train_slices.list", ssl4mis / "val.list")
    assert not list(ssl4mis.parent.glob("run/checkpoints/*"))


# -- UA-MT LA: case ids in train.list (validation: its tail) and test.list -----------------------
def test_la_case_listed_twice_is_refused_not_counted_as_two(tmp_path):
    """The issue's case: one case twice in train.list and data.labeled=2 trained "2 patients"."""
    root = fake_la(tmp_path)
    (root / "train.list").write_text("CASE00\nCASE00\n")
    with pytest.raises(DataError, match=r"'CASE00' is listed twice \(lines 1 and 2\)") as err:
        la_datamodule(root, labeled=2).setup("fit")
    refusal(err, "CASE00", root / "train.list")


def test_la_case_in_training_and_held_out_validation_is_refused(tmp_path):
    """With val_cases=1 the repeated last line is both trained on and the validation case."""
    root = fake_la(tmp_path)
    (root / "train.list").write_text("CASE00\nCASE01\nCASE02\nCASE01\n")
    with pytest.raises(DataError, match=r"'CASE01' is listed twice \(lines 2 and 4\)") as err:
        la_datamodule(root, val_cases=1).setup("fit")
    refusal(err, "CASE01", root / "train.list")


def test_la_test_list_duplicate_and_overlap_are_refused(tmp_path):
    root = fake_la(tmp_path)
    append(root / "test.list", "CASE03")
    with pytest.raises(DataError, match=r"'CASE03' is listed twice \(lines 1 and 2\)") as err:
        la_datamodule(root).setup("fit")
    refusal(err, "CASE03", root / "test.list")
    (root / "test.list").write_text("CASE03\nCASE02\n")
    with pytest.raises(DataError, match="case 'CASE02' is in two split lists") as err:
        la_datamodule(root).setup("fit")
    refusal(err, "CASE02", root / "train.list", root / "test.list")
    with pytest.raises(DataError, match="case 'CASE02' is in two split lists"):
        make_layout("uamt", root).ids("test")  # what `segssl test` reads


# -- NIfTI folder: case ids in train/val/test.list ---------------------------------------------
@pytest.mark.parametrize("name", ["train.list", "val.list", "test.list"])
@pytest.mark.parametrize("dims", [2, 3])
def test_folder_case_listed_twice_is_refused(tmp_path, name, dims):
    root = make_folder(tmp_path / "mydata")
    case = (root / name).read_text().split()[0]
    append(root / name, case)
    with pytest.raises(DataError, match="is listed twice") as err:
        setup_fit(root, dims=dims)
    refusal(err, case, root / name)


@pytest.mark.parametrize(
    ("first", "second", "case"),
    [
        ("train.list", "val.list", "c2"),
        ("train.list", "test.list", "c3"),
        ("val.list", "test.list", "c4"),
    ],
)
def test_folder_case_in_two_lists_is_refused(tmp_path, first, second, case):
    root = make_folder(tmp_path / "mydata")
    append(root / second, case)
    with pytest.raises(DataError, match=f"case '{case}' is in two split lists") as err:
        setup_fit(root)
    refusal(err, case, root / first, root / second)


# -- plan (folder datasets) ---------------------------------------------------------------------
def test_plan_proposes_data_labeled_from_distinct_cases_and_refuses_duplicates(tmp_path, capsys):
    """5 cases (case00-02 labeled, case03 unlabeled, case04 val): a repeated case00 line made
    plan propose data.labeled=4 for 3 labeled cases."""
    root = make_dataset(tmp_path / "ds")
    assert make_plan(fingerprint(root), name="x").choices["data.labeled"] == 3
    append(root / "train.list", "case00")
    with pytest.raises(DataError, match=r"'case00' is listed twice \(lines 1 and 5\)") as err:
        fingerprint(root)
    refusal(err, "case00", root / "train.list")
    with pytest.raises(SystemExit) as exit_info:
        plan_main([f"data.root={root}", "--print"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "segssl plan:" in stderr and "'case00' is listed twice" in stderr


@pytest.mark.parametrize(
    ("edits", "case", "first", "second"),
    [
        ({"val.list": "case01"}, "case01", "train.list", "val.list"),
        ({"test.list": "case02"}, "case02", "train.list", "test.list"),
        ({"test.list": "case04"}, "case04", "val.list", "test.list"),
    ],
)
def test_plan_refuses_a_case_in_two_lists(tmp_path, edits, case, first, second):
    root = make_dataset(tmp_path / "ds")
    for name, line in edits.items():
        append(root / name, line)
    with pytest.raises(DataError, match=f"case '{case}' is in two split lists") as err:
        fingerprint(root)
    refusal(err, case, root / first, root / second)


# -- the real data pass -----------------------------------------------------------------------
@pytest.mark.skipif(not (SHARED_DATA / "ACDC").is_dir(), reason="ACDC data not present")
def test_real_acdc_lists_pass():
    layout = make_layout("ssl4mis", SHARED_DATA / "ACDC")
    layout.check_splits()
    assert len(layout.ids("train")) == 1312 and len(layout.ids("val")) == 20


@pytest.mark.skipif(not (SHARED_DATA / "LA").is_dir(), reason="LA data not present")
def test_real_la_lists_pass():
    root = SHARED_DATA / "LA"
    layout = make_layout("uamt", root, val_cases=2)
    assert len(layout.ids("train")) + len(layout.ids("val")) == 16 and layout.ids("test")
    check_split_lists({"train": root / "train_full.list", "test": root / "test_full.list"})
