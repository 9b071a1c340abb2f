"""``data=folder``: a NIfTI folder of your own, read as 2-D slices or 3-D patches, with the
labeled subset, header spacing, a training run end to end and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segssl.data.layouts import make_layout
from segssl.data.readers import DataError

SPACING = (1.5, 1.25, 3.0)
SHAPE = (24, 20, 6)
# c1 has no label (unlabeled); train.list: c0 c1 c2 c3; val: c4; test: c5
CASES = {"c0": True, "c1": False, "c2": True, "c3": True, "c4": True, "c5": True}


def write_nifti(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, np.diag([*spacing[: array.ndim], *[1.0] * (4 - array.ndim)]))
    image.header.set_zooms(spacing[: array.ndim])
    nib.save(image, str(path))


def make_folder(root: Path, shape=SHAPE, cases=CASES, seed: int = 0) -> Path:
    """Bright blobs (class 1) on noise, 30 + 10 * noise intensities (so normalisation matters)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for case, labeled in cases.items():
        centre = np.array(shape) / 2 + rng.uniform(-2, 2, size=len(shape))
        radius = ((grid - centre.reshape(-1, *[1] * len(shape))) ** 2).sum(0) ** 0.5
        label = (radius < min(shape[:2]) / 4).astype(np.uint8)
        image = 30 + 10 * (label + 0.3 * rng.normal(size=shape))
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", image.astype(np.float32))
        if labeled:
            write_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    (root / "train.list").write_text("c0\nc1\nc2\nc3\n")
    (root / "val.list").write_text("c4\n")
    (root / "test.list").write_text("c5\n")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "mydata")


def folder_run(root: Path, *extra: str, labeled: int = 1) -> list[str]:
    return [
        "data=folder", f"data.root={root}", f"data.labeled={labeled}", "data.image_size=32",
        "data.batch_size=4", "data.labeled_batch_size=2", "data.num_workers=0",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
        *extra,
    ]  # fmt: skip


# -- splits and reading ---------------------------------------------------------------------
def test_2d_items_are_slices_and_labeled_are_the_first_labeled_cases(folder):
    layout = make_layout("folder", folder, dims=2)
    labeled, unlabeled = layout.split_labeled(1)
    assert labeled == [f"c0_slice_{k}" for k in range(6)]
    assert {i.rsplit("_slice_", 1)[0] for i in unlabeled} == {"c1", "c2", "c3"}
    assert len(unlabeled) == 18
    # c1 has no label, so the second labeled case is c2
    labeled, unlabeled = layout.split_labeled(2)
    assert {i.rsplit("_slice_", 1)[0] for i in labeled} == {"c0", "c2"}
    assert not set(labeled) & set(unlabeled)
    item = layout.load("train", "c0_slice_3", num_classes=2, require_label=True)
    assert item.image.shape == (24, 20) and item.label.shape == (24, 20)
    unlabeled_item = layout.load("train", "c1_slice_0", num_classes=2, require_label=False)
    assert unlabeled_item.label is None


def test_3d_items_are_cases_and_spacing_comes_from_the_header(folder):
    layout = make_layout("folder", folder, dims=3)
    assert layout.train_ndim == 3
    assert layout.split_labeled(3) == (["c0", "c2", "c3"], ["c1"])
    volume = layout.load("val", "c4", num_classes=2, require_label=True)
    assert volume.image.shape == SHAPE and volume.spacing == pytest.approx(SPACING)
    assert abs(volume.image.mean()) < 1e-4 and volume.image.std() == pytest.approx(1, abs=1e-3)
    assert volume.label.dtype == np.uint8 and set(np.unique(volume.label)) == {0, 1}


def test_2d_evaluation_volumes_put_the_slice_axis_first(folder):
    volume = make_layout("folder", folder, dims=2, slice_axis=2).load(
        "test", "c5", num_classes=2, require_label=True
    )
    assert volume.image.shape == (6, 24, 20) and volume.label.shape == (6, 24, 20)
    assert volume.spacing == pytest.approx((3.0, 1.5, 1.25))
    axis0 = make_layout("folder", folder, dims=2, slice_axis=0)
    assert len(axis0.ids("train")) == 4 * 24


def test_2d_images_are_one_slice_volumes_and_nnunet_names_are_read(tmp_path):
    root = tmp_path / "flat"
    make_folder(root, shape=(16, 12))
    (root / "imagesTr" / "c0.nii.gz").rename(root / "imagesTr" / "c0_0000.nii.gz")
    layout = make_layout("folder", root, dims=2, normalize="minmax")
    assert layout.ids("train") == [f"{c}_slice_0" for c in ("c0", "c1", "c2", "c3")]
    item = layout.load("train", "c0_slice_0", num_classes=2, require_label=True)
    assert item.image.shape == (16, 12) and item.image.min() == 0 and item.image.max() == 1
    volume = layout.load("val", "c4", num_classes=2, require_label=True)
    assert volume.image.shape == (1, 16, 12) and volume.spacing == pytest.approx((1.0, 1.5, 1.25))


# -- end to end -----------------------------------------------------------------------------
def test_folder_2d_train_run_writes_results(run_task, folder):
    output_dir, _, cfg = run_task(folder_run(folder))
    results = json.loads((output_dir / "results.json").read_text())
    assert results["split"] == "test" and results["protocol"]["distance_units"] == "mm"
    assert results["config"]["data"]["layout"] == "folder"
    for summary in results["models"].values():
        assert set(summary["per_class"]) == {"foreground"} and summary["num_cases"] == 1
    assert Path(results["checkpoint"]).name.startswith("best_step2")


def test_folder_3d_train_run_writes_results(run_task, folder):
    output_dir, _, _ = run_task(
        folder_run(
            folder,
            "data.layout_options.dims=3",
            "data.patch_size=[16,16,8]",
            "model=vnet",
            "model.features=4",
            "evaluation=sliding_window",
            "evaluation.stride=[8,8,8]",
            labeled=2,  # 2 labeled patches per batch need 2 labeled volumes
        )
    )
    results = json.loads((output_dir / "results.json").read_text())
    assert results["protocol"]["inference"] == "sliding-window"
    assert results["protocol"]["patch_size"] == [16, 16, 8]
    assert set(results["models"]["ensemble"]["per_class"]) == {"foreground"}


# -- clear failures -------------------------------------------------------------------------
def setup_fit(root: Path, labeled: int = 1, **options) -> None:
    from segssl.data.datamodule import SemiSupervisedDataModule

    SemiSupervisedDataModule(
        root=root, num_classes=2, class_names=["fg"], labeled=labeled, image_size=16,
        batch_size=2, labeled_batch_size=1, name="mine", layout="folder", num_workers=0,
        layout_options=options,
    ).setup("fit")  # fmt: skip


def test_missing_list(folder):
    """Without val.list the folds split train.list's 3 labeled cases: too few for 5 folds,
    said with the ways out; val.list without train.list names the missing list."""
    (folder / "val.list").unlink()
    with pytest.raises(DataError, match=r"3 labeled case\(s\) .*train\.list.* for a 5-fold split.*"
                       r"num_folds=2\.\.3, or write a val\.list"):  # fmt: skip
        setup_fit(folder)
    assert not (folder / "splits_final.json").exists()
    (folder / "val.list").write_text("c4\n")
    (folder / "train.list").unlink()
    with pytest.raises(DataError, match=r"split list not found: .*train\.list"):
        setup_fit(folder)


def test_list_naming_a_missing_image(folder):
    (folder / "train.list").write_text("c0\nghost\n")
    with pytest.raises(DataError, match=r"train\.list names 1 missing .*imagesTr/ghost\.nii\.gz"):
        setup_fit(folder)


def test_val_case_without_label(folder):
    (folder / "train.list").write_text("c0\nc2\nc3\n")  # c1 moves to val (one list a case)
    (folder / "val.list").write_text("c1\n")
    with pytest.raises(DataError, match=r"val\.list names 1 missing .*labelsTr/c1\.nii\.gz"):
        setup_fit(folder)


def test_image_label_shape_mismatch(folder):
    write_nifti(folder / "labelsTr" / "c0.nii.gz", np.zeros((24, 20, 5), np.uint8))
    with pytest.raises(DataError, match=r"labelsTr/c0\.nii\.gz: 'label' shape \(24, 20, 5\)"):
        setup_fit(folder, dims=3)


def test_labeled_count_larger_than_the_labeled_training_cases(folder):
    with pytest.raises(DataError, match=r"data.labeled=4 .*train\.list names 3 case\(s\) with a"):
        setup_fit(folder, labeled=4)


def test_bad_labels_and_options(folder):
    write_nifti(folder / "labelsTr" / "c0.nii.gz", np.full(SHAPE, 2, np.uint8))
    with pytest.raises(DataError, match=r"c0\.nii\.gz: 'label' values span \[2, 2\].*0\.\.1"):
        setup_fit(folder)
    with pytest.raises(DataError, match=r"dims=4: expected 2 or 3"):
        make_layout("folder", folder, dims=4)
    with pytest.raises(DataError, match=r"normalize='max'"):
        make_layout("folder", folder, normalize="max")
