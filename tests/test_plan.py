"""`segssl plan`: generated NIfTI datasets whose right plan is known, each plan trained 5 steps
through the experiment file it wrote (found on the config search path), and bad datasets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segssl.commands.plan import PlanError, run, settings
from segssl.data.readers import DataError
from segssl.planning.fingerprint import fingerprint
from segssl.planning.planner import make_plan
from tests.conftest import segssl_env


def save(path: Path, array: np.ndarray, spacing) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    zooms = [*spacing[:3], *[1.0] * (3 - len(spacing[:3]))]
    image = nib.Nifti1Image(array, np.diag([*zooms, 1.0]))
    image.header.set_zooms(tuple(spacing[: array.ndim]) + (1.0,) * (array.ndim - len(spacing)))
    nib.save(image, str(path))


def blob(shape, centre, radii) -> np.ndarray:
    grids = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1


def make_dataset(
    root: Path,
    *,
    shape=(48, 48, 8),
    spacings=((1.0, 1.0, 6.0),),
    ct: bool = False,
    cases: int = 5,
    unlabeled: int = 1,
    seed: int = 0,
) -> Path:
    """``cases`` cases: the last is val, the ``unlabeled`` before it have no label. Two classes
    (an outer blob 1 holding an inner blob 2); MR-like floats or CT-like integer HU."""
    rng = np.random.default_rng(seed)
    names = [f"case{i:02d}" for i in range(cases)]
    for i, name in enumerate(names):
        size = tuple(s + (i % 2) * (2 if len(shape) == 2 or s > 8 else 0) for s in shape)
        centre = [s / 2 + rng.uniform(-1, 1) for s in size]
        outer = blob(size, centre, [s / 3 for s in size])
        inner = blob(size, centre, [s / 6 for s in size])
        label = outer.astype(np.uint8) + inner.astype(np.uint8)
        if ct:  # air around a water-like body, organs at 40 and 80 HU
            image = np.full(size, -1000.0) + 1000 * blob(size, centre, [s / 2.2 for s in size])
            image += 40 * outer + 40 * inner + rng.normal(0, 10, size)
            image = np.rint(image).astype(np.int16)
        else:  # MR: arbitrary positive scale per scan
            scale = rng.uniform(200, 800)
            image = (scale * (0.2 + 0.3 * outer + 0.3 * inner) + rng.normal(0, 10, size)).astype(
                np.float32
            )
        spacing = spacings[i % len(spacings)]
        save(root / "imagesTr" / f"{name}.nii.gz", image, spacing)
        if not (cases - 1 - unlabeled <= i < cases - 1):
            save(root / "labelsTr" / f"{name}.nii.gz", label, spacing)
    (root / "train.list").write_text("\n".join(names[:-1]) + "\n")
    (root / "val.list").write_text(names[-1] + "\n")
    return root


def plan_of(root: Path, **kwargs):
    return make_plan(fingerprint(root), name="x", **kwargs).choices


def train_written_experiment(cwd: Path, name: str) -> dict:
    """`train +experiment=NAME` from ``cwd`` (whose segssl_configs/ holds it), 5 steps."""
    env = segssl_env(OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "segssl", "train", f"+experiment={name}", "logger=csv",
        "trainer.max_steps=5", "trainer.val_check_interval=5", "data.num_workers=0",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={cwd / 'run'}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((cwd / "run" / "results.json").read_text())


def test_anisotropic_mr_gives_2d_slices_along_the_coarse_axis(tmp_path):
    root = make_dataset(tmp_path / "mr", shape=(48, 48, 8), spacings=((1.0, 1.0, 6.0),))
    choices = plan_of(root)
    assert choices["data.layout_options.dims"] == 2
    assert choices["data.layout_options.slice_axis"] == 2
    assert choices["data.layout_options.normalize"] == "zscore"
    assert choices["model"] == "unet2d" and choices["evaluation"] == "slices"
    assert choices["data.num_classes"] == 3 and choices["data.labeled"] == 3
    # the coarse axis first: slices along axis 0
    rotated = make_dataset(tmp_path / "mr0", shape=(8, 48, 48), spacings=((5.0, 0.8, 0.8),))
    assert plan_of(rotated)["data.layout_options.slice_axis"] == 0


def test_isotropic_ct_gives_3d_patches_and_ct_normalisation(tmp_path):
    spacings = ((1.0, 1.0, 1.0), (1.2, 1.2, 1.2))
    root = make_dataset(tmp_path / "ct", shape=(40, 40, 40), spacings=spacings, ct=True)
    facts = fingerprint(root)
    assert facts["modality"]["guess"] == "CT"
    choices = make_plan(facts, name="x").choices
    assert choices["data.layout_options.dims"] == 3
    assert choices["model"] == "vnet" and choices["evaluation"] == "sliding_window"
    assert choices["data.layout_options.normalize"] == "ct"
    intensity = choices["data.layout_options.intensity"]
    # foreground = organs at 40 / 80 HU (+ noise): the clip window and the statistics are theirs
    assert -20 < intensity["low"] < 40 < 80 < intensity["high"] < 140
    assert 40 < intensity["mean"] < 80 and intensity["std"] > 5
    # cases at 1.0 and 1.2 mm: resampled to the median (3 of the 5 are at 1.0)
    assert choices["data.layout_options.target_spacing"] == [1.0, 1.0, 1.0]
    assert all(p % 16 == 0 and p <= 40 for p in choices["data.patch_size"])


def test_memory_budget_shrinks_the_patch_and_batch(tmp_path):
    root = make_dataset(tmp_path / "ct", shape=(96, 96, 96), spacings=((1.0,) * 3,), ct=True)
    facts = fingerprint(root)
    large = make_plan(facts, name="x", gpu_memory_gb=24).choices["data.patch_size"]
    small = make_plan(facts, name="x", gpu_memory_gb=0.5).choices["data.patch_size"]
    assert np.prod(small) < np.prod(large) == 96**3
    mr = fingerprint(make_dataset(tmp_path / "mr", shape=(256, 256, 4)))
    assert make_plan(mr, name="x", gpu_memory_gb=24).choices["data.batch_size"] == 24
    assert make_plan(mr, name="x", gpu_memory_gb=2).choices["data.batch_size"] < 24


def test_tiny_images_get_a_smaller_area_threshold(tmp_path):
    tiny = plan_of(make_dataset(tmp_path / "tiny", shape=(32, 32), spacings=((1.0, 1.0),)))
    large = plan_of(make_dataset(tmp_path / "large", shape=(256, 256, 3)))
    assert tiny["data.image_size"] == 32 and large["data.image_size"] == 256
    assert large["filter.area_threshold"] == 50  # the published value at 256x256
    assert 1 <= tiny["filter.area_threshold"] < 5


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param({"shape": (48, 48, 8), "spacings": ((1.0, 1.0, 6.0),)}, id="mr-2d"),
        pytest.param(
            {"shape": (40, 40, 40), "spacings": ((1.0,) * 3, (1.2,) * 3), "ct": True}, id="ct-3d"
        ),
        pytest.param({"shape": (32, 32), "spacings": ((1.0, 1.0),)}, id="tiny-2d"),
    ],
)
def test_the_written_experiment_trains_five_steps(tmp_path, monkeypatch, kind):
    root = make_dataset(tmp_path / "data", **kind)
    monkeypatch.chdir(tmp_path)
    record = run(settings([f"data.root={root}", "name=mine"]))
    experiment = tmp_path / "segssl_configs" / "experiment" / "mine.yaml"
    assert Path(record["experiment"]) == experiment and experiment.is_file()
    plan = json.loads(experiment.with_name("mine.plan.json").read_text())
    assert all(choice["reason"] for choice in plan["plan"].values())
    results = train_written_experiment(tmp_path, "mine")
    config = results["config"]
    assert (
        config["data"]["layout_options"]["dims"]
        == plan["plan"]["data.layout_options.dims"]["value"]
    )
    assert config["filter"]["area_threshold"] == plan["plan"]["filter.area_threshold"]["value"]
    assert config["experiment_name"] == "mine"
    assert results["models"]["ensemble"]["num_cases"] == 1


def test_print_shows_the_override_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    run(settings([f"data.root={root}", "--print"]))
    out = capsys.readouterr().out
    line = out.strip().splitlines()[-1]
    assert line.startswith("python -m segssl train data=folder model=unet2d")
    assert "data.layout_options.dims=2" in line and f"data.root={root.resolve()}" in line
    assert not (tmp_path / "segssl_configs").exists()


def test_an_earlier_experiment_is_kept(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    run(settings([f"data.root={root}", "name=mine"]))
    written = tmp_path / "segssl_configs" / "experiment" / "mine.yaml"
    before = written.read_text()
    with pytest.raises(PlanError, match="mine.yaml exists: pass overwrite=true"):
        run(settings([f"data.root={root}", "name=mine"]))
    assert written.read_text() == before
    with pytest.raises(PlanError, match="packaged experiment"):
        run(settings([f"data.root={root}", "name=acdc"]))


# -- bad datasets: named errors before reading at scale ------------------------------------------
def test_mixed_dimensionality_is_refused(tmp_path):
    root = make_dataset(tmp_path / "d")
    save(root / "imagesTr" / "case01.nii.gz", np.zeros((48, 48), np.float32), (1.0, 1.0))
    save(root / "labelsTr" / "case01.nii.gz", np.zeros((48, 48), np.uint8), (1.0, 1.0))
    with pytest.raises(DataError, match="mixed spatial dimensions.*case01.nii.gz"):
        fingerprint(root)


def test_different_channel_counts_are_refused(tmp_path):
    root = make_dataset(tmp_path / "d")
    save(root / "imagesTr" / "case01.nii.gz", np.zeros((50, 50, 8, 2), np.float32), (1, 1, 6, 1))
    with pytest.raises(DataError, match=r"mixed channels.*2 channels.*case01\.nii\.gz"):
        fingerprint(root)


def test_a_label_with_values_no_other_label_has_is_refused(tmp_path):
    root = make_dataset(tmp_path / "d", cases=6)
    path = root / "labelsTr" / "case01.nii.gz"
    label = np.asarray(nib.load(str(path)).dataobj).copy()
    label[0, 0, 0] = 7
    save(path, label, (1.0, 1.0, 6.0))
    with pytest.raises(
        DataError, match=r"case01\.nii\.gz: label value\(s\) \[7\] appear in no other"
    ):
        fingerprint(root)


def test_an_empty_labels_folder_is_refused(tmp_path):
    root = make_dataset(tmp_path / "d")
    for path in (root / "labelsTr").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="labelsTr: no label files"):
        fingerprint(root)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(PlanError, match="data.root is required"):
        settings([])
    with pytest.raises(PlanError, match="plan.gpu_memory_gb=-1"):
        settings(["data.root=x", "plan.gpu_memory_gb=-1"])
    with pytest.raises(PlanError, match=r"unknown setting\(s\) \['batch'\]"):
        settings(["data.root=x", "batch=3"])


def test_segssl_config_path_makes_an_experiment_found_from_anywhere(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data")
    configs = tmp_path / "my configs"
    run(settings([f"data.root={root}", "name=mine", f"config_dir={configs}"]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = segssl_env(SEGSSL_CONFIG_PATH=str(configs))
    command = [sys.executable, "-m", "segssl", "train", "+experiment=mine", "--cfg", "job"]
    shown = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"root: {root.resolve()}" in shown.stdout and "experiment_name: mine" in shown.stdout
    del env["SEGSSL_CONFIG_PATH"]
    missing = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "experiment/mine" in missing.stderr


def test_the_method_class_comes_from_its_config_file(tmp_path):
    from segssl.planning.planner import method_target

    assert method_target("dsaif") == "segssl.methods.CrossPseudoSupervision"  # via cps.yaml
    assert method_target("supervised") == "segssl.methods.Supervised"
    facts = fingerprint(make_dataset(tmp_path / "mr", shape=(256, 256, 4)))
    one = make_plan(facts, name="x", gpu_memory_gb=2, method="supervised").choices
    two = make_plan(facts, name="x", gpu_memory_gb=2, method="dsaif").choices
    assert one["data.batch_size"] > two["data.batch_size"]  # one network fits twice the batch
    with pytest.raises(PlanError, match="plan.method='nope': no method config"):
        make_plan(facts, name="x", method="nope")


def test_without_val_list_the_plan_uses_the_folds_and_saves_them(tmp_path, monkeypatch, capsys):
    """No val.list: the folds of the 7 labeled cases of train.list (5-fold: 5 or 6 train on
    each) decide data.labeled (the smallest fold's, so any data.fold fits); --print writes no
    split, a plan saves nnU-Net's splits_final.json beside the data, and the same folds when
    read back."""
    root = make_dataset(tmp_path / "data", cases=8, unlabeled=1)
    (root / "val.list").unlink()
    (root / "train.list").write_text("\n".join(f"case{i:02d}" for i in range(8)) + "\n")
    monkeypatch.chdir(tmp_path)
    run(settings([f"data.root={root}", "--print"]))
    assert "data.layout_options.num_folds=5" in capsys.readouterr().out
    assert not (root / "splits_final.json").exists()
    record = run(settings([f"data.root={root}", "name=folds"]))
    choices = {k: v["value"] for k, v in record["plan"].items()}
    assert choices["data.labeled"] == 5 and choices["data.layout_options.num_folds"] == 5
    assert record["fingerprint"]["split"]["labeled_per_fold"] == [5, 5, 6, 6, 6]
    folds = json.loads((root / "splits_final.json").read_text())
    assert [len(f["val"]) for f in folds] == [2, 2, 1, 1, 1]
    assert "fold 0 of 5" in capsys.readouterr().out
    again = fingerprint(root)["split"]
    assert again["source"] == "splits_final.json" and again["labeled_per_fold"] == [5, 5, 6, 6, 6]
