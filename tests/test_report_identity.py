"""``segssl report`` keys runs by identity (issue 22, item 5): one training run counts once
whatever its folder or its neighbours hold (a ``segssl test`` re-evaluation, the results a resume
archived, a copy of the folder); re-evaluations are listed as such, never as seeds; a value of the
wrong type or NaN, or a malformed results.json, is named in the report, not averaged or a
traceback."""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from segssl.commands.report import ReportError, main, write_report
from segssl.evaluation.results import read_results, write_results

PROTOCOL = {"inference": "slice-wise", "image_size": 32, "distance_units": "mm"}
CLASSES = ("RV", "Myo", "LV")


def aggregate(dice: float) -> dict[str, Any]:
    mean = {"dice": dice, "jaccard": dice / 2, "hd95": 10 * (1 - dice), "asd": 1.0}
    return {"mean": mean, "per_class": {c: dict(mean) for c in CLASSES}, "num_cases": 2}


def training_config(folder: Path, method: str, seed: int, max_steps: int) -> dict[str, Any]:
    return {
        "method_name": method,
        "seed": seed,
        "experiment_name": "synthetic",
        "data": {"name": "synthetic", "labeled": 1, "root": "/data/synthetic"},
        "method": {"_target_": f"segssl.methods.{method}"},
        "trainer": {"max_steps": max_steps},
        "paths": {"output_dir": str(folder)},
    }


def train_result(
    folder: Path,
    method: str,
    seed: int,
    dice: float,
    *,
    max_steps: int = 100,
    run_id: str | None = None,
    target: Path | None = None,
) -> Path:
    """results.json as ``train`` leaves it in ``folder`` (best and last tested; ``run_id`` and
    the run state as this version writes them, none as older versions did); ``target`` writes
    the file elsewhere (a resume's archive)."""
    model = "net" if method == "supervised" else "ensemble"
    evaluations = {
        label: {
            "checkpoint": f"{folder}/checkpoints/{label}.ckpt",
            "selection": "best on validation" if label == "best" else "last",
            "models": {model: aggregate(dice - (0.02 if label == "last" else 0.0))},
        }
        for label in ("best", "last")
    }
    path = target or folder / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_results(
        path,
        split="test",
        checkpoint=evaluations["best"]["checkpoint"],
        protocol=PROTOCOL,
        models=evaluations["best"]["models"],
        config=training_config(folder, method, seed, max_steps),
        evaluations=evaluations,
        selection_model=model,
    )
    if run_id is not None:
        results = json.loads(path.read_text())
        (folder / ".segssl_run.json").write_text(json.dumps({"run_id": run_id}))
        path.write_text(json.dumps({**results, "run_id": run_id}))
    return path


def reevaluation_result(folder: Path, run: Path, dice: float, with_id: bool) -> Path:
    """results.json as ``segssl test ckpt_path=RUN/checkpoints/best.ckpt`` leaves it: its own
    config and the training run's, the checkpoint it tested, and (this version) the run it
    re-evaluates."""
    trained = json.loads((run / "results.json").read_text())["config"]
    own = {"task_name": "test", "ckpt_path": f"{run}/checkpoints/best.ckpt", "seed": 42,
           "paths": {"output_dir": str(folder)}}  # fmt: skip
    folder.mkdir(parents=True)
    path = write_results(
        folder / "results.json",
        split="test",
        checkpoint=f"{run}/checkpoints/best.ckpt",
        protocol=PROTOCOL,
        models={"ensemble": aggregate(dice)},
        config={"test": own, "run": trained},
        selection_model="ensemble",
    )
    if with_id:
        state = json.loads((run / ".segssl_run.json").read_text())
        results = json.loads(path.read_text())
        results["reevaluates"] = {"run_id": state["run_id"], "run_dir": str(run)}
        path.write_text(json.dumps(results))
    return path


def overall(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as handle:
        return {
            (r["method"], r["checkpoint"]): r for r in csv.DictReader(handle)
            if r["class"] == "overall"
        }  # fmt: skip


@pytest.mark.parametrize("with_ids", [True, False], ids=["run-ids", "older-files"])
def test_sweep_reevaluation_extended_run_and_copy_count_once(tmp_path, with_ids):
    outputs = tmp_path / "outputs"
    sweep = outputs / "train" / "multirun" / "2026-01-01_00-00-00"

    def new_id() -> str | None:
        return uuid.uuid4().hex if with_ids else None

    train_result(sweep / "0", "cps", 0, 0.80, run_id=new_id())
    train_result(sweep / "1", "cps", 1, 0.90, run_id=new_id())
    # `segssl test` of seed 0's best checkpoint, into its own folder
    reevaluation_result(outputs / "test" / "runs" / "2026-01-02", sweep / "0", 0.10, with_ids)
    # a run extended by `train resume=` from 100 to 200 steps: its first result archived
    extended = outputs / "train" / "runs" / "2026-01-03"
    run_id = new_id()
    archive = extended / ".hydra" / "resume_2026-01-04_00-00-00" / "results.json"
    train_result(extended, "supervised", 0, 0.60, max_steps=100, run_id=run_id, target=archive)
    train_result(extended, "supervised", 0, 0.70, max_steps=200, run_id=run_id)
    # a copy of a run folder beside the original
    shutil.copytree(sweep / "1", outputs / "backup" / "1")

    write_report([outputs])
    rows = overall(outputs / "report.csv")
    assert set(rows) == {(m, c) for m in ("cps", "supervised") for c in ("best", "last")}
    for label in ("best", "last"):
        cps = rows[("cps", label)]
        assert (cps["n"], cps["seeds"]) == ("2", "0 1")  # was n=3, seeds 0 0 1 (and n=2 last)
        assert float(cps["dice_mean"]) == pytest.approx(0.85 - (label == "last") * 0.02)
        supervised = rows[("supervised", label)]
        assert (supervised["n"], supervised["seeds"]) == ("1", "0")
        assert float(supervised["dice_mean"]) == pytest.approx(0.70 - (label == "last") * 0.02)
    text = (outputs / "report.md").read_text()
    # the re-evaluation is listed with the run it re-evaluates, not as a seed
    section = text.split("## Re-evaluations")[1].split("\n## ")[0]
    assert "test/runs/2026-01-02/results.json" in section
    assert "train/multirun/2026-01-01_00-00-00/0/results.json" in section
    assert "0.1000" in section and "best.ckpt" in section
    # the archive and the copy are named, each with the reason it does not count
    skipped = text.split("## Not reported")[1]
    assert "resume_2026-01-04_00-00-00/results.json" in skipped and "archived" in skipped
    assert "backup/1/results.json" in skipped and "same run as" in skipped
    assert "**Source:** 3 results.json under" in text
    assert "one per training run, and 1 `segssl test` re-evaluation(s)" in text


def test_a_reevaluation_of_a_run_not_in_the_report_and_only_reevaluations(tmp_path):
    run = tmp_path / "elsewhere" / "run"
    train_result(run, "cps", 3, 0.8, run_id="abc")
    report = tmp_path / "report"
    train_result(report / "train" / "0", "cps", 0, 0.7, run_id="def")
    reevaluation_result(report / "test" / "0", run, 0.5, with_id=True)
    write_report([report])
    rows = overall(report / "report.csv")
    assert rows[("cps", "best")]["n"] == "1" and rows[("cps", "best")]["seeds"] == "0"
    section = (report / "report.md").read_text().split("## Re-evaluations")[1]
    assert "not in this report" in section and str(run) in section
    with pytest.raises(ReportError, match=r"only `segssl test` re-evaluations .*1 results\.json"):
        write_report([report / "test"])


def test_wrong_type_and_nan_values_are_named_not_averaged(tmp_path):
    runs = [train_result(tmp_path / str(i), "cps", i, 0.6 + 0.1 * i) for i in range(3)]
    results = json.loads(runs[0].read_text())
    results["evaluations"]["best"]["models"]["ensemble"]["mean"]["dice"] = "0.99"
    runs[0].write_text(json.dumps(results))
    results = json.loads(runs[1].read_text())
    results["evaluations"]["last"]["models"]["ensemble"]["per_class"]["LV"]["hd95"] = float("nan")
    runs[1].write_text(json.dumps(results))  # JSON's NaN literal, as Python writes it
    write_report([tmp_path])
    rows = overall(tmp_path / "report.csv")
    best, last = rows[("cps", "best")], rows[("cps", "last")]
    assert (best["n"], best["seeds"]) == ("2", "1 2")  # "0.99" of seed 0 is not a Dice
    assert float(best["dice_mean"]) == pytest.approx(0.75)
    assert (last["n"], last["seeds"]) == ("2", "0 2")  # seed 1's last has a NaN
    assert float(last["dice_mean"]) == pytest.approx(0.68)
    skipped = (tmp_path / "report.md").read_text().split("## Not reported")[1]
    assert "0/results.json" in skipped
    assert "evaluations.best.models.ensemble.mean.dice" in skipped and "'0.99'" in skipped
    assert "evaluations.last.models.ensemble.per_class.LV.hd95" in skipped and "nan" in skipped


def test_malformed_results_are_listed_not_a_traceback(tmp_path, capsys):
    good = train_result(tmp_path / "0", "cps", 0, 0.8)
    cases = {
        "config5": ("config", 5),
        "models": ("models", ["ensemble"]),
        "testrun": ("config", {"test": {}, "run": 5}),
        "seconds": ("extra", {"training": {"seconds_per_step": "fast"}}),
    }
    for seed, (name, (key, value)) in enumerate(cases.items(), start=1):
        path = train_result(tmp_path / name, "cps", seed, 0.8)
        results = json.loads(path.read_text())
        results[key] = value
        path.write_text(json.dumps(results))
    missing = {k: v for k, v in json.loads(good.read_text()).items() if k != "split"}
    (tmp_path / "nosplit").mkdir()
    (tmp_path / "nosplit" / "results.json").write_text(json.dumps(missing))

    main([str(tmp_path)])  # exits normally: every good run is reported
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "wrote" in captured.out
    rows = overall(tmp_path / "report.csv")
    assert rows[("cps", "best")]["n"] == "2"  # the good run and the one with a bad s/step
    assert rows[("cps", "best")]["seconds_per_step"] == ""
    skipped = (tmp_path / "report.md").read_text().split("## Not reported")[1]
    assert "config5/results.json" in skipped and "`config`: expected a JSON object" in skipped
    assert "models/results.json" in skipped and "`models`: expected a JSON object" in skipped
    assert "`config.run`: expected a JSON object" in skipped
    assert "extra.training.seconds_per_step" in skipped and "'fast'" in skipped
    assert "missing keys ['split']" in skipped

    with pytest.raises(ValueError, match=r"`config`: expected a JSON object .*got 5"):
        read_results(tmp_path / "config5")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "config5"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "`config`: expected a JSON object" in err


# -- the real commands: train, test of its checkpoint, an extension, then report --------------
@pytest.mark.slow
def test_train_test_and_extend_then_report_counts_the_run_once(run_task, tmp_path):
    from tests.test_resume import FAST, snapshot_hydra

    fast = [o for o in FAST if not o.startswith("test=")]
    run_dir, _, cfg = run_task([*fast, "trainer.max_steps=2", "test=true", "seed=5"])
    snapshot_hydra(run_dir, cfg)
    trained = read_results(run_dir)
    run_id = trained["run_id"]
    assert run_id == json.loads((run_dir / ".segssl_run.json").read_text())["run_id"]
    best = trained["evaluations"]["best"]["checkpoint"]
    test_dir, _, _ = run_task([f"ckpt_path={best}"], task="test", name="tested")
    assert read_results(test_dir)["reevaluates"] == {"run_id": run_id, "run_dir": str(run_dir)}
    assert not (test_dir / ".segssl_run.json").exists()
    run_task([f"resume={run_dir}", "trainer.max_steps=4"], name="run")
    extended = read_results(run_dir)
    assert extended["run_id"] == run_id and extended["config"]["trainer"]["max_steps"] == 4
    assert list(run_dir.glob(".hydra/resume_*/results.json"))

    write_report([tmp_path], tmp_path / "report")
    rows = overall(tmp_path / "report" / "report.csv")
    assert {(r["n"], r["seeds"]) for r in rows.values()} == {("1", "5")}  # best and last
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Re-evaluations" in text and "tested/results.json" in text
