"""End-to-end training runs on the tiny synthetic data: every method, the documented overrides,
the results contract, checkpoint evaluation and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segssl.runs.hydra_app import config_dir
from tests.conftest import TINY
from tests.helpers.configs import group_options

RESULT_KEYS = {
    "extra",
    "split",
    "checkpoint",
    "protocol",
    "models",
    "config",
    "created",
    "evaluations",
    "selection_model",
    "run_id",  # the run's identity: `report` counts it once (issue 22)
}
METRICS = {"dice", "jaccard", "hd95", "asd"}
# every method file (found by globbing: a new method is tested with no list to edit)
METHODS = group_options("method")
# what the first methods are known to evaluate, checked beside what each class declares
KNOWN_MODELS = {
    "supervised": ({"net"}, "net"),
    "cps": ({"net1", "net2", "ensemble"}, "ensemble"),
    "dsaif": ({"net1", "net2", "ensemble"}, "ensemble"),
    "mean_teacher": ({"student", "teacher"}, "student"),
}


def read_results(output_dir: Path) -> dict:
    return json.loads((output_dir / "results.json").read_text())


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_writes_results(run_task, method):
    from hydra.utils import instantiate

    output_dir, _, cfg = run_task([*TINY, f"method={method}"])
    module = instantiate(cfg.method)
    models = set(module.predict_fns()) | set(module.ensembles())
    networks = set(module.network_names)
    if method in KNOWN_MODELS:
        assert (models, module.selection_model) == KNOWN_MODELS[method]
    results = read_results(output_dir)
    assert set(results) == RESULT_KEYS
    # the report reads the selected model from here, not from a table of methods
    assert results["selection_model"] == module.selection_model
    assert results["split"] == "test"
    assert set(results["models"]) == models
    for summary in results["models"].values():
        assert set(summary["mean"]) == METRICS
        assert set(summary["per_class"]) == {"RV", "Myo", "LV"}
        assert summary["num_cases"] == 4  # 2 test patients x 2 frames
        assert 0.0 <= summary["mean"]["dice"] <= 1.0
    assert results["config"]["method_name"] == method
    filters = {p.stem for p in (config_dir() / "filter").glob("*.yaml")}
    assert results["config"]["filter_name"] in filters  # report labels tell views apart by it
    assert Path(results["checkpoint"]).is_file()
    # the best-on-validation and the last checkpoint, each tested and labelled, never mixed
    best, last = results["evaluations"]["best"], results["evaluations"]["last"]
    assert best["checkpoint"] == results["checkpoint"] and best["models"] == results["models"]
    assert best["selection"] == "best on validation"
    assert Path(last["checkpoint"]).name == "last.ckpt" and set(last["models"]) == models
    assert torch.load(last["checkpoint"], weights_only=True)["global_step"] == 3  # end of training
    assert (output_dir / "per_case_best.csv").is_file()
    assert (output_dir / "per_case_last.csv").is_file()
    checkpoint = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)
    assert {k.split(".")[1] for k in checkpoint["state_dict"] if k.startswith("networks.")} == (
        networks
    )
    assert checkpoint["global_step"] == 2  # best on validation at step 2, not the last step
    assert (output_dir / "per_case.csv").read_text().count("\n") == 1 + 4 * 3 * len(models)
    # cost: seconds per training step (validation excluded), also logged as time/step_s
    training = results["extra"]["training"]
    assert training["timed_steps"] >= 1 and training["seconds_per_step"] > 0
    assert training["accelerator"] == "CPUAccelerator"
    assert "time/step_s" in next((output_dir / "csv").rglob("metrics.csv")).read_text()
    assert (output_dir / "training_views.png").stat().st_size > 1000  # first validation
    assert (output_dir / "val_overlays" / "step_2.png").stat().st_size > 1000


@pytest.mark.parametrize("ablation", ["max_only", "min_only", "blur", "noise", "none"])
def test_filter_ablations_train(run_task, ablation):
    from hydra.utils import instantiate

    output_dir, _, cfg = run_task(
        [*TINY, "method=dsaif", f"filter={ablation}", "filter.p=1.0", "trainer.max_steps=2"]
    )
    assert read_results(output_dir)["config"]["filter"]["p"] == 1.0
    views = instantiate(cfg.filter)
    out = views({"image": torch.rand(1, 16, 16)})
    kinds = {type(views.view_a).__name__, type(views.view_b).__name__}
    expected = {
        "max_only": {"TreeFilter", "function"},
        "min_only": {"TreeFilter", "function"},
        "blur": {"GaussianBlur"},
        "noise": {"GaussianNoise"},
        "none": {"function"},
    }[ablation]
    assert kinds == expected
    assert out["image_1"].shape == out["image_2"].shape == (1, 16, 16)
    if ablation != "none":
        assert not torch.equal(out["image_1"], out["image_2"])


def test_mean_teacher_teacher_is_an_ema_of_the_student(run_task):
    from segssl.methods import MeanTeacher

    output_dir, _, _ = run_task([*TINY, "method=mean_teacher", "trainer.max_steps=3"])
    checkpoint = read_results(output_dir)["checkpoint"]
    method = MeanTeacher.load_from_checkpoint(checkpoint, map_location="cpu")
    student, teacher = method.networks["student"], method.networks["teacher"]
    assert all(not p.requires_grad for p in teacher.parameters())
    differs = [
        not torch.equal(s, t)
        for s, t in zip(student.parameters(), teacher.parameters(), strict=True)
    ]
    assert any(differs)  # the teacher lags behind the student


def test_heterogeneous_pair(run_task):
    from monai.networks.nets import AttentionUnet, BasicUNet

    from segssl.methods import CrossPseudoSupervision

    output_dir, _, _ = run_task(
        [*TINY, "method=dsaif", "+model@method.model_2=attention_unet2d", "trainer.max_steps=2"]
    )
    results = read_results(output_dir)
    method = CrossPseudoSupervision.load_from_checkpoint(results["checkpoint"], map_location="cpu")
    assert isinstance(method.networks["net1"], BasicUNet)
    assert isinstance(method.networks["net2"], AttentionUnet)
    assert set(results["models"]) == {"net1", "net2", "ensemble"}


def test_method_chooses_views_and_command_line_can_override(run_task):
    from hydra.utils import instantiate

    from segssl.filters.views import TwoViews

    _, _, cfg = run_task([*TINY, "method=cps", "trainer.max_steps=1", "test=false"])
    assert cfg.filter._target_ == "segssl.filters.views.TwoViews" and cfg.filter.p == 0.0
    _, _, cfg = run_task(
        [
            *TINY,
            "method=dsaif",
            "filter.p=0.25",
            "filter.area_threshold=7",
            "trainer.max_steps=1",
            "test=false",
        ],
        name="b",
    )
    views = instantiate(cfg.filter)
    assert isinstance(views, TwoViews) and views.p == 0.25
    assert views.view_a.area_threshold == 7 and {views.view_a.tree, views.view_b.tree} == {
        "max",
        "min",
    }


def test_supervised_sees_only_labeled_data(run_task):
    from segssl.commands.train import build_data_and_method

    _, _, cfg = run_task([*TINY, "method=supervised", "trainer.max_steps=1", "test=false"])
    datamodule, method = build_data_and_method(cfg)
    batch = next(iter(datamodule.train_dataloader()))[0]
    assert set(batch) == {"labeled"}
    assert batch["labeled"]["image_1"].shape == (2, 1, 32, 32)
    assert not method.uses_unlabeled


def test_labeled_count_image_size_and_seed(run_task):
    from segssl.commands.train import build_data_and_method

    _, _, cfg = run_task(
        [
            *TINY,
            "data.labeled=2",
            "data.image_size=48",
            "seed=3",
            "trainer.max_steps=1",
            "test=false",
        ]
    )
    datamodule, _ = build_data_and_method(cfg)
    labeled = {s["case"].split("_")[0] for s in datamodule._train["labeled"]}
    unlabeled = {s["case"].split("_")[0] for s in datamodule._train["unlabeled"]}
    assert len(labeled) == 2 and not labeled & unlabeled and len(unlabeled) == 2
    assert all("label" not in s for s in datamodule._train["unlabeled"])
    batch = next(iter(datamodule.train_dataloader()))[0]
    assert batch["unlabeled"]["image_2"].shape == (2, 1, 48, 48)
    assert "label" not in batch["unlabeled"]


def test_same_seed_same_metrics(run_task):
    first, _, _ = run_task([*TINY, "method=cps", "seed=5"], name="a")
    second, _, _ = run_task([*TINY, "method=cps", "seed=5"], name="b")
    a, b = read_results(first)["models"], read_results(second)["models"]
    assert a == b


@pytest.mark.parametrize("logger", ["csv", "none", "wandb"])
def test_loggers(run_task, logger):
    output_dir, _, _ = run_task([*TINY, f"logger={logger}", "trainer.max_steps=2"])
    assert (output_dir / "results.json").is_file()
    if logger == "csv":
        metrics = (output_dir / "csv" / "version_0" / "metrics.csv").read_text()
        assert "train/loss" in metrics and "val/dice" in metrics
    if logger == "wandb":
        runs = list((output_dir / "wandb").glob("offline-run-*"))
        assert len(runs) == 1


def test_data_root_override_and_test_command(run_task, tmp_path):
    """Train on a data.root of our own, then evaluate its checkpoint with `segssl test`."""
    from segssl.data.synthetic import ensure_synthetic_dataset

    root = tmp_path / "my_data"
    ensure_synthetic_dataset(
        root,
        num_train_patients=3,
        num_val_patients=1,
        num_test_patients=1,
        image_size=32,
        slices_per_volume=3,
        seed=7,
    )
    output_dir, _, _ = run_task([*TINY, f"data.root={root}", "data.synthetic=null"])
    results = read_results(output_dir)
    assert results["config"]["data"]["root"] == str(root)
    assert results["models"]["ensemble"]["num_cases"] == 2
    test_dir, _, _ = run_task(
        [f"ckpt_path={results['checkpoint']}", "split=val"], task="test", name="test_run"
    )
    tested = read_results(test_dir)
    assert tested["split"] == "val" and tested["checkpoint"] == results["checkpoint"]
    assert set(tested["models"]) == {"net1", "net2", "ensemble"}
    assert tested["selection_model"] == "ensemble"


def test_cli_help_and_runs_from_any_directory(tmp_path):
    help_text = subprocess.run(
        [sys.executable, "-m", "segssl", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "train" in help_text and "test" in help_text
    bad = subprocess.run([sys.executable, "-m", "segssl", "fly"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'fly'" in bad.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "segssl",
            "train",
            *TINY,
            "trainer.max_steps=1",
            "logger=none",
            "test=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "data" / "synthetic" / "train_slices.list").is_file()
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize("method", ["supervised", "cps", "dsaif", "mean_teacher"])
def test_bf16_mixed_precision_and_channels_last(run_task, method):
    output_dir, _, _ = run_task(
        [
            *TINY,
            f"method={method}",
            "trainer.precision=bf16-mixed",
            "model.channels_last=true",
            "trainer.max_steps=2",
        ]
    )
    results = read_results(output_dir)
    assert results["config"]["trainer"]["precision"] == "bf16-mixed"
    for summary in results["models"].values():
        assert 0.0 <= summary["mean"]["dice"] <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("method", ["supervised", "cps", "dsaif", "mean_teacher"])
def test_gpu_mixed_precision(run_task, method, precision):
    output_dir, _, _ = run_task(
        [
            *TINY,
            f"method={method}",
            "trainer=gpu",
            f"trainer.precision={precision}",
            "model.channels_last=true",
            "trainer.max_steps=3",
        ]
    )
    assert (output_dir / "results.json").is_file()


def test_default_config_on_the_real_acdc_copy(run_task, caplog):
    """`train data.root=<ACDC>`: the SSL4MIS folder is read as it is (no synthetic data written
    into it), validation on val.list, and a clear message that there is no test split."""
    from tests.conftest import shared_data

    root = shared_data("ACDC")
    output_dir, _, _ = run_task(
        [*TINY, f"data.root={root}", "data.image_size=32", "trainer.max_steps=1"]
    )
    results = read_results(output_dir)
    assert results["split"] == "val" and results["models"]["ensemble"]["num_cases"] == 20
    assert "No test split" in caplog.text and "test.list is missing" in caplog.text
    assert not (root / "synthetic.json").exists()


def test_step_timer_carries_its_totals_through_a_checkpoint():
    """A resumed run reports the whole run's seconds per step, not only the last segment's."""
    from segssl.utils.callbacks import StepTimer

    first = StepTimer()
    first.seconds, first.steps = 6.0, 4
    resumed = StepTimer()
    resumed.load_state_dict(first.state_dict())
    resumed.seconds += 4.0
    resumed.steps += 1
    assert resumed.summary() == {"timed_steps": 5, "seconds_per_step": 2.0}
