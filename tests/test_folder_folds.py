"""``data=folder`` without val.list: nnU-Net's 5-fold cross-validation over the labeled cases
(``data.fold=0..4|all``), saved to ``splits_final.json`` in the data folder and read from it
(yours or nnU-Net's), never replaced; the split-list checks hold for the folds; ``plan`` and a
training run use them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segssl.data.layouts import make_layout
from segssl.data.readers import DataError
from tests.test_folder_data import folder_run, write_nifti

LABELED = [f"case{i:02d}" for i in range(11)]  # 11: folds of 3, 2, 2, 2, 2
UNLABELED = ["extra0", "extra1"]


def make_cases(root: Path, labeled=LABELED, unlabeled=UNLABELED, shape=(16, 16, 3)) -> Path:
    """Small NIfTI cases, a bright square (class 1) on noise; no split lists."""
    rng = np.random.default_rng(0)
    for case in [*labeled, *unlabeled]:
        label = np.zeros(shape, np.uint8)
        label[4:12, 4:12] = 1
        image = (label + rng.normal(size=shape) * 0.3).astype(np.float32)
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", image)
        if case in labeled:
            write_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    return root


def nnunet_folds(cases: list[str], k: int = 5) -> list[set[str]]:
    """The validation sets nnU-Net makes (``generate_crossval_split``: scikit-learn's
    ``KFold(k, shuffle=True, random_state=12345)`` over the sorted ids): the sorted ids shuffled
    by ``numpy.random.RandomState(12345)``, cut in order into parts whose first ``n % k`` are
    one larger."""
    order = np.arange(len(cases))
    np.random.RandomState(12345).shuffle(order)
    ids = sorted(cases)
    sizes = [len(ids) // k + (i < len(ids) % k) for i in range(k)]
    starts = np.cumsum([0, *sizes])
    return [{ids[j] for j in order[starts[i] : starts[i + 1]]} for i in range(k)]


def test_each_fold_validates_on_its_part_and_the_split_is_saved_once(tmp_path):
    root = make_cases(tmp_path / "mydata")
    vals = []
    for fold in range(5):
        layout = make_layout("folder", root, fold=fold, cache=False)
        train, val = layout.cases("train"), layout.cases("val")
        vals.append(set(val))
        assert set(train) == set(LABELED) - set(val) | set(UNLABELED)
        assert train[-2:] == UNLABELED  # unlabeled cases train in every fold, after the labeled
        assert layout.has_split("val") and not layout.has_split("test")
    assert vals == nnunet_folds(LABELED)  # nnU-Net's folds: a partition of the labeled cases
    assert [len(v) for v in vals] == [3, 2, 2, 2, 2]
    saved = json.loads((root / "splits_final.json").read_text())
    assert [set(f["val"]) for f in saved] == vals
    assert all(set(f["train"]) == set(LABELED) - set(f["val"]) for f in saved)
    # the first data.labeled of a fold's train list: a seeded random subset, nested by count
    labeled, _ = make_layout("folder", root, fold=1, cache=False).split_labeled(3)
    assert [c.rsplit("_slice_", 1)[0] for c in labeled][::3] == saved[1]["train"][:3]
    assert labeled and saved[1]["train"][:3] != sorted(saved[1]["train"])[:3]


def test_a_users_splits_file_is_read_and_never_replaced(tmp_path):
    root = make_cases(tmp_path / "mydata")
    mine = [
        {"train": LABELED[2:], "val": LABELED[:2]},
        {"train": LABELED[:9], "val": LABELED[9:]},
    ]
    text = json.dumps(mine)
    (root / "splits_final.json").write_text(text)
    layout = make_layout("folder", root, fold=1, cache=False)
    assert layout.cases("val") == LABELED[9:]
    assert layout.cases("train") == [*LABELED[:9], *UNLABELED]
    assert (root / "splits_final.json").read_text() == text
    with pytest.raises(
        DataError, match=r"data.fold=2: .*splits_final\.json has 2 folds \(0 \.\. 1\)"
    ):
        make_layout("folder", root, fold=2, cache=False).cases("train")


def test_fold_all_trains_and_validates_on_every_labeled_case(tmp_path):
    root = make_cases(tmp_path / "mydata")
    layout = make_layout("folder", root, fold="all", cache=False)
    assert set(layout.cases("train")) == set(LABELED) | set(UNLABELED)
    assert set(layout.cases("val")) == set(LABELED)
    assert "fold all" in layout.split().description


def test_test_list_cases_stay_out_of_the_folds(tmp_path):
    root = make_cases(tmp_path / "mydata")
    (root / "test.list").write_text("case00\ncase01\n")
    layout = make_layout("folder", root, fold=0, cache=False)
    assert layout.cases("test") == ["case00", "case01"]
    folds = json.loads((root / "splits_final.json").read_text())
    assert not {"case00", "case01"} & {c for f in folds for c in f["train"] + f["val"]}
    assert len({c for f in folds for c in f["val"]}) == len(LABELED) - 2


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ([{"train": ["case02", "case02"], "val": ["case03"]}],
         r"splits_final\.json: fold 0 lists 'case02' twice in 'train'"),
        ([{"train": ["case02", "case03"], "val": ["case03"]}],
         r"splits_final\.json: fold 0 lists 'case03' in both 'train' and 'val'"),
        ([{"train": ["case00", "case03"], "val": ["case04"]}],
         r"case 'case00' is in fold 0 of .*splits_final\.json and in .*test\.list"),
        ([{"train": ["case02"], "val": "case03"}], r"fold 0 is not \{'train'.*nnU-Net's format"),
    ],
)  # fmt: skip
def test_the_split_list_checks_hold_for_the_folds(tmp_path, folds, message):
    root = make_cases(tmp_path / "mydata", labeled=LABELED[:5], unlabeled=[])
    (root / "test.list").write_text("case00\n")
    (root / "splits_final.json").write_text(json.dumps(folds))
    with pytest.raises(DataError, match=message):
        make_layout("folder", root, cache=False).cases("train")


def test_folds_and_lists_do_not_mix_and_bad_folds_are_named(tmp_path):
    root = make_cases(tmp_path / "mydata", labeled=LABELED[:4], unlabeled=[])
    with pytest.raises(DataError, match=r"4 labeled case\(s\) .* for a 5-fold split"):
        make_layout("folder", root, cache=False).cases("train")
    assert not (root / "splits_final.json").exists()
    assert len(make_layout("folder", root, num_folds=4, cache=False).cases("val")) == 1
    (root / "train.list").write_text("case00\ncase01\n")
    (root / "val.list").write_text("case02\n")
    with pytest.raises(DataError, match=r"data.fold=1: .*val\.list already says which cases"):
        make_layout("folder", root, fold=1, cache=False).cases("train")
    for bad in (-1, "two", True):
        with pytest.raises(DataError, match=r"data.fold=.*expected a fold number 0 \.\. 4"):
            make_layout("folder", root, fold=bad)


def test_nnunet_channel_files_name_one_case(tmp_path):
    root = tmp_path / "mydata"
    for case in ("a", "b"):
        for channel in ("0000", "0001"):
            write_nifti(
                root / "imagesTr" / f"{case}_{channel}.nii.gz", np.zeros((4, 4), np.float32)
            )
    layout = make_layout("folder", root, cache=False)
    assert layout.image_cases() == ["a", "b"]


@pytest.mark.slow
def test_a_run_of_fold_1_validates_and_tests_on_that_fold(run_task, tmp_path):
    """`train data=folder data.fold=1` without lists: the folds are saved in the data folder,
    the run's config says the fold, and (no test.list) the tested volumes are fold 1's."""
    root = make_cases(tmp_path / "mydata", shape=(32, 32, 2))
    out, _, _ = run_task(folder_run(root, "data.fold=1", "method=supervised"))
    folds = json.loads((root / "splits_final.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"]["fold"] == 1 and results["split"] == "val"
    tested = {line.split(",")[1] for line in (out / "per_case.csv").read_text().splitlines()[1:]}
    assert tested == set(folds[1]["val"])
    assert (
        "fold 1 of 5" in (out / "hydra_app.log").read_text()
        if (out / "hydra_app.log").exists()
        else True
    )
