"""LA in UA-MT's layout: splits, 3-D training crops, sliding-window inference and a tiny
``+experiment=la`` run on the real data (skipped without it); clear errors on small fakes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from segssl.data.layouts import make_layout
from segssl.data.readers import DataError
from tests.conftest import compose_config, shared_data

TRAIN_DIR = "2018LA_Seg_Training Set"


def la_overrides(root: Path, *extra: str) -> list[str]:
    return ["+experiment=la", f"data.root={root}", "data.num_workers=0", "logger=csv", *extra]


# -- the real data --------------------------------------------------------------------------
def test_la_labeled_split_and_held_out_validation():
    root = shared_data("LA")
    ids = (root / "train.list").read_text().split()
    layout = make_layout("uamt", root)
    labeled, unlabeled = layout.split_labeled(8)
    assert labeled == ids[:8] and unlabeled == ids[8:] and len(ids) == 16
    assert not set(labeled) & set(unlabeled)
    assert layout.ids("val") == [] and not layout.has_split("val")
    assert layout.ids("test") == (root / "test.list").read_text().split()

    held_out = make_layout("uamt", root, val_cases=2)
    labeled, unlabeled = held_out.split_labeled(8)
    assert held_out.ids("val") == ids[-2:] and held_out.has_split("val")
    assert unlabeled == ids[8:14] and not set(labeled + unlabeled) & set(ids[-2:])
    with pytest.raises(DataError, match=r"data.labeled=15 .* 14 training cases .*val_cases=2"):
        held_out.split_labeled(15)


def test_la_train_loader_gives_crops_of_the_configured_patch(tmp_path):
    root = shared_data("LA")
    cfg = compose_config("train", la_overrides(root), tmp_path / "run")
    datamodule = instantiate(cfg.data, views=instantiate(cfg.filter))
    datamodule.setup("fit")
    assert len(datamodule._train["labeled"]) == 8 and len(datamodule._train["unlabeled"]) == 8
    batch = next(iter(datamodule.train_dataloader()))[0]
    labeled, unlabeled = batch["labeled"], batch["unlabeled"]
    for key in ("image", "image_1", "image_2"):
        assert labeled[key].shape == (2, 1, 112, 112, 80) and labeled[key].dtype == torch.float32
        assert unlabeled[key].shape == (2, 1, 112, 112, 80)
    assert labeled["label"].shape == (2, 1, 112, 112, 80) and labeled["label"].dtype == torch.long
    assert set(labeled["label"].unique().tolist()) <= {0, 1}
    assert "label" not in unlabeled


def test_la_dsaif_views_filter_the_3d_crop_with_26_connectivity(tmp_path):
    """The configured filter (connectivity: null) runs on the whole 3-D crop, 26-connected."""
    from segssl.data.transforms import patch_train_transforms
    from segssl.filters import tree_filter

    root = shared_data("LA")
    cfg = compose_config("train", la_overrides(root, "filter.p=1.0", "filter.gamma_p=0.0"),
                         tmp_path / "run")  # fmt: skip
    views = instantiate(cfg.filter)
    assert views.view_a.connectivity is None
    case = (root / "train.list").read_text().split()[0]
    with h5py.File(root / TRAIN_DIR / case / "mri_norm2.h5") as f:
        image = f["image"][()]
    out = patch_train_transforms([32, 32, 24], views=views, augment=False)({"image": image[None]})
    crop = out["image"][0].numpy()
    expected = {tree_filter(crop, t, 50, 26).tobytes() for t in ("max", "min")}
    # network 2's view is rotated in-plane by rot_k_2 quarter turns (filter.rotate_view_2)
    view_2 = np.rot90(out["image_2"][0].numpy(), -out["rot_k_2"], axes=(0, 1))
    got = {out["image_1"][0].numpy().tobytes(), np.ascontiguousarray(view_2).tobytes()}
    assert got == expected
    assert tree_filter(crop, "max", 50, 6).tobytes() not in got


def test_la_sliding_window_covers_the_whole_volume(tmp_path):
    from segssl.evaluation.evaluator import VolumeEvaluator

    root = shared_data("LA")
    cfg = compose_config("train", la_overrides(root), tmp_path / "run")
    evaluator = VolumeEvaluator(2, ["LA"], **instantiate(cfg.evaluation))
    assert evaluator.patch_size == [112, 112, 80] and evaluator.stride == [18, 18, 4]
    case = (root / "test.list").read_text().split()[0]
    with h5py.File(root / TRAIN_DIR / case / "mri_norm2.h5") as f:
        image = f["image"][()]

    def predict(x: torch.Tensor) -> torch.Tensor:  # "foreground" = bright voxels
        fg = torch.sigmoid(x)
        return torch.cat([1 - fg, fg], dim=1)

    probs = evaluator.predict(predict, image, torch.device("cpu"))
    assert probs.shape == (2, *image.shape)
    assert torch.allclose(probs[1], torch.sigmoid(torch.as_tensor(image)), atol=1e-5)


def test_tiny_la_experiment_writes_results(run_task):
    root = shared_data("LA")
    overrides = la_overrides(
        root,
        "data.patch_size=[32,32,24]",
        "evaluation.stride=[32,32,24]",
        "model.features=8",  # the same VNet, a quarter of the compute
        "+trainer.limit_test_batches=1",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    )
    output_dir, _, cfg = run_task(overrides)
    results = json.loads((output_dir / "results.json").read_text())
    assert results["split"] == "test" and results["config"]["experiment_name"] == "la"
    assert Path(results["checkpoint"]).name == "last.ckpt"  # no validation: the last one
    assert results["protocol"]["inference"] == "sliding-window"
    assert results["protocol"]["distance_units"] == "voxels"
    for model in ("net1", "net2", "ensemble"):
        summary = results["models"][model]
        assert set(summary["per_class"]) == {"LA"} and summary["num_cases"] == 1
        assert 0.0 <= summary["per_class"]["LA"]["dice"] <= 1.0


# -- 3-D training transforms, on synthetic volumes -----------------------------------------
def test_patch_transforms_pad_crop_and_keep_image_and_label_aligned():
    """Crops are always the patch shape (padding a too-small axis), and every random rot90 /
    flip / crop moves image and label together."""
    from segssl.data.transforms import patch_train_transforms

    rng = np.random.default_rng(0)
    label = (rng.random((30, 24, 10)) > 0.5).astype(np.uint8)
    transform = patch_train_transforms([16, 20, 12], augment=True)
    transform.set_random_state(0)
    for _ in range(12):
        out = transform({"image": label[None].astype(np.float32) + 1, "label": label})
        assert out["image"].shape == (1, 16, 20, 12) and out["label"].shape == (1, 16, 20, 12)
        assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.long
        padded = out["image"] == 0  # the depth (10 < 12) is zero-padded
        assert padded.any() and torch.equal(
            out["label"][padded], torch.zeros_like(out["label"][padded])
        )
        assert torch.equal(out["image"][~padded] - 1, out["label"][~padded].float())
    unlabeled = transform({"image": label[None].astype(np.float32)})
    assert set(unlabeled) == {"image"} and unlabeled["image"].shape == (1, 16, 20, 12)


# -- clear failures, on small fake LA folders -----------------------------------------------
def fake_la(root: Path, cases: int = 4, shape=(20, 18, 12), bad: dict | None = None) -> Path:
    """A UA-MT folder of ``cases`` random volumes (``bad``: case -> label shape)."""
    ids = [f"CASE{i:02d}" for i in range(cases)]
    rng = np.random.default_rng(0)
    for case in ids:
        (root / TRAIN_DIR / case).mkdir(parents=True)
        label_shape = (bad or {}).get(case, shape)
        with h5py.File(root / TRAIN_DIR / case / "mri_norm2.h5", "w") as f:
            f["image"] = rng.normal(size=shape).astype(np.float32)
            f["label"] = (rng.random(label_shape) > 0.5).astype(np.uint8)
    (root / "train.list").write_text("\n".join(ids[:-1]) + "\n")
    (root / "test.list").write_text(ids[-1] + "\n")
    return root


def la_datamodule(root: Path, labeled: int = 1, **options):
    from segssl.data.datamodule import SemiSupervisedDataModule

    return SemiSupervisedDataModule(
        root=root,
        num_classes=2,
        class_names=["LA"],
        labeled=labeled,
        image_size=None,
        batch_size=2,
        labeled_batch_size=1,
        name="la",
        layout="uamt",
        patch_size=[16, 16, 8],
        num_workers=0,
        layout_options=options,
    )


def test_la_missing_list(tmp_path):
    root = fake_la(tmp_path)
    (root / "train.list").unlink()
    with pytest.raises(DataError, match=r"split list not found: .*train\.list"):
        la_datamodule(root).setup("fit")


def test_la_list_naming_a_missing_file(tmp_path):
    root = fake_la(tmp_path)
    (root / "train.list").write_text("CASE00\nNOPE\n")
    with pytest.raises(DataError, match=r"train\.list names 1 missing file.*NOPE/mri_norm2\.h5"):
        la_datamodule(root).setup("fit")


def test_la_image_label_shape_mismatch(tmp_path):
    root = fake_la(tmp_path, bad={"CASE01": (20, 18, 11)})
    with pytest.raises(DataError, match=r"CASE01/mri_norm2\.h5: 'label' shape \(20, 18, 11\)"):
        la_datamodule(root).setup("fit")


def test_la_labeled_count_and_val_cases_larger_than_the_training_set(tmp_path):
    root = fake_la(tmp_path)
    with pytest.raises(DataError, match=r"data.labeled=4 but .*train\.list has 3 training"):
        la_datamodule(root, labeled=4).setup("fit")
    with pytest.raises(DataError, match=r"val_cases=3 holds out all 3 cases"):
        la_datamodule(root, val_cases=3).setup("fit")
    with pytest.raises(DataError, match=r"layout_options=.*'val_case'.*'uamt'"):
        la_datamodule(root, val_case=1).setup("fit")


def test_la_spacing_option_gives_mm(tmp_path):
    root = fake_la(tmp_path)
    layout = make_layout("uamt", root, spacing=[0.625, 0.625, 0.625])
    sample = layout.load("test", "CASE03", num_classes=2, require_label=True)
    assert sample.spacing == (0.625, 0.625, 0.625) and sample.case == "CASE03"
    assert (
        make_layout("uamt", root).load("test", "CASE03", num_classes=2, require_label=True).spacing
        is None
    )
    with pytest.raises(DataError, match="spacing"):
        make_layout("uamt", root, spacing=[1.0, 1.0])


# -- the ACDC benchmark experiment, on the real data ----------------------------------------
@pytest.mark.parametrize(("patients", "slices"), [(1, 32), (3, 68), (7, 136), (14, 256)])
def test_acdc_labeled_slice_counts(patients, slices):
    """SSL4MIS's ACDC settings: labeled patients -> labeled training slices."""
    from segssl.data.layouts.ssl4mis import patient_of, split_labeled

    layout = make_layout("ssl4mis", shared_data("ACDC"))
    labeled, unlabeled = split_labeled(layout.ids("train"), patients)
    assert len(labeled) == slices and len(labeled) + len(unlabeled) == 1312
    labeled_patients = {patient_of(s) for s in labeled}
    assert len(labeled_patients) == patients
    assert not labeled_patients & {patient_of(s) for s in unlabeled}


def test_acdc_experiment_composes_and_trains(run_task):
    root = shared_data("ACDC")
    output_dir, _, cfg = run_task(
        [
            "+experiment=acdc",
            f"data.root={root}",
            "data.image_size=32",
            "trainer.max_steps=2",
            "data.labeled=3",
            "data.num_workers=0",
            "logger=csv",
            "+trainer.limit_test_batches=2",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ]
    )
    assert cfg.experiment_name == "acdc" and cfg.trainer.val_check_interval == 200
    assert (cfg.data.batch_size, cfg.data.labeled_batch_size, cfg.data.labeled) == (24, 12, 3)
    assert cfg.trainer.max_steps == 2 and cfg.method._target_.endswith("CrossPseudoSupervision")
    results = json.loads((output_dir / "results.json").read_text())
    assert results["split"] == "val"  # the shared copy has no test.list
    assert set(results["models"]["ensemble"]["per_class"]) == {"RV", "Myo", "LV"}
    assert results["models"]["ensemble"]["num_cases"] == 2  # limit_test_batches
