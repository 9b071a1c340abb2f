"""``segssl report --baseline``: best and last checkpoints apart, paired comparisons on the same
test volumes (known answers on constructed per-volume data), refusals, and the W&B copy read
back from the offline run folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from segssl.commands.report import ReportError, main, report_group, write_report
from segssl.commands.report.runs import collect_runs
from segssl.evaluation.results import PER_CASE_COLUMNS, write_per_case_csv, write_results
from tests.wandb_records import run_contents

PROTOCOL = {"inference": "slice-wise", "image_size": 96, "distance_units": "mm"}
CLASSES = ("RV", "Myo", "LV")
VOLUMES = [f"patient{i:03d}_frame01" for i in range(20)]
RNG = np.random.default_rng(0)
BASE_DICE = RNG.uniform(0.6, 0.9, len(VOLUMES))  # the volumes differ far more than methods do
BASELINE = "method=supervised data.labeled=3"
BASE_HD95 = RNG.uniform(2.0, 12.0, len(VOLUMES))


def aggregate(dice: np.ndarray, hd95: np.ndarray) -> dict:
    mean = {"dice": float(dice.mean()), "jaccard": 0.5, "hd95": float(hd95.mean()), "asd": 1.0}
    return {"mean": mean, "per_class": {c: dict(mean) for c in CLASSES}, "num_cases": len(dice)}


def per_case(model: str, dice: np.ndarray, hd95: np.ndarray, volumes=VOLUMES) -> list[dict]:
    """Rows whose mean over classes per volume is exactly (dice, hd95)."""
    rows = []
    for case, d, h in zip(volumes, dice, hd95, strict=True):
        for offset, cls in zip((-0.01, 0.0, 0.01), CLASSES, strict=True):
            values = {"dice": d + offset, "jaccard": 0.5, "hd95": h - offset, "asd": 1.0}
            rows.append({"model": model, "case": case, "class": cls, **values,
                         "pred_empty": False, "label_empty": False})  # fmt: skip
    assert set(rows[0]) == set(PER_CASE_COLUMNS)
    return rows


def train_run(
    folder: Path,
    method: str,
    seed: int,
    shift: float = 0.0,
    labels=("best", "last"),
    volumes=VOLUMES,
) -> Path:
    """A run folder as `segssl train` leaves it: both checkpoints tested, each with its
    per-volume CSV; ``shift`` moves every volume's Dice up (and HD95 down by 10x as much);
    the last checkpoint scores 0.02 Dice below the best."""
    model = "net" if method == "supervised" else "ensemble"
    noise = np.random.default_rng([seed, len(method)]).normal(0, 0.002, len(volumes))
    evaluations = {}
    folder.mkdir(parents=True)
    for label in labels:
        drop = 0.02 if label == "last" else 0.0
        dice = BASE_DICE[: len(volumes)] + shift - drop + noise
        hd95 = BASE_HD95[: len(volumes)] - 10 * shift + noise
        evaluations[label] = {
            "checkpoint": f"{folder}/checkpoints/{label}.ckpt",
            "selection": "best on validation" if label == "best" else "last",
            "models": {model: aggregate(dice, hd95)},
        }
        write_per_case_csv(folder / f"per_case_{label}.csv", per_case(model, dice, hd95, volumes))
    selected = evaluations["best" if "best" in evaluations else "last"]
    config = {
        "method_name": method,
        "seed": seed,
        "experiment_name": "acdc_cpu",
        "data": {"name": "acdc", "labeled": 3, "root": "/data/ACDC"},
        "method": {"_target_": f"segssl.methods.{method}"},
        "paths": {"output_dir": str(folder)},
    }
    write_results(
        folder / "results.json",
        split="test",
        checkpoint=selected["checkpoint"],
        protocol=PROTOCOL,
        models=selected["models"],
        config=config,
        evaluations=evaluations,
    )
    results = json.loads((folder / "results.json").read_text())
    results["selection_model"] = model  # as `train` stores it (issue 11)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """supervised, cps (every volume +0.05 Dice) and dsaif (the same as supervised up to seed
    noise), two seeds each."""
    root = tmp_path / "multirun"
    for job, (method, shift) in enumerate(
        [(m, s) for m, s in (("supervised", 0.0), ("cps", 0.05), ("dsaif", 0.0)) for _ in (0, 1)]
    ):
        train_run(root / str(job), method, seed=job % 2, shift=shift)
    return root


def read_rows(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open() as handle:
        return {
            (r["method"], r["checkpoint"], r["class"]): r
            for r in csv.DictReader(handle)
            if r["class"] == "overall"
        }


def test_best_and_last_apart_and_paired_against_the_baseline(sweep):
    write_report([sweep], baseline="method=supervised")
    rows = read_rows(sweep / "report.csv")
    cps_best = rows[("cps", "best", "overall")]
    cps_last = rows[("cps", "last", "overall")]
    # best and last are two numbers, never one
    assert float(cps_best["dice_mean"]) - float(cps_last["dice_mean"]) == pytest.approx(0.02)
    for label in ("best", "last"):
        shifted = rows[("cps", label, "overall")]
        assert shifted["baseline"] == BASELINE and shifted["volumes"] == "20"
        assert float(shifted["dice_diff"]) == pytest.approx(0.05, abs=0.002)
        assert float(shifted["dice_ci_low"]) > 0.04 and shifted["dice_significant"] == "True"
        assert float(shifted["dice_p"]) < 0.001 and shifted["dice_wins"] == "20"
        assert float(shifted["hd95_diff"]) == pytest.approx(-0.5, abs=0.002)
        assert shifted["hd95_wins"] == "20" and shifted["hd95_significant"] == "True"
        same = rows[("dsaif", label, "overall")]
        assert float(same["dice_ci_low"]) < 0 < float(same["dice_ci_high"])
        assert same["dice_significant"] == "False" and float(same["dice_p"]) > 0.05
        assert rows[("supervised", label, "overall")]["baseline"] == ""
    text = (sweep / "report.md").read_text()
    assert "## Paired comparison with `method=supervised`" in text
    assert "## Overall, best on validation checkpoint" in text
    assert "## Overall, last checkpoint" in text
    lines = text.splitlines()
    cps_line = next(x for x in lines if x.startswith(f"| method=cps data.labeled=3 | {BASELINE}"))
    assert "+0.05" in cps_line and "(n.s.)" not in cps_line and "20/20" in cps_line
    dsaif_line = next(x for x in lines if x.startswith("| method=dsaif data.labeled=3 | meth"))
    assert "(n.s.)" in dsaif_line


def test_groups_on_other_volumes_or_no_such_baseline_are_refused(sweep, capsys):
    train_run(sweep / "9", "mean_teacher", seed=0, volumes=VOLUMES[:15])
    refused = r"mean_teacher data.labeled=3 and method=supervised data.labeled=3 were scored on"
    with pytest.raises(ReportError, match=refused + r" different volumes.*patient015"):
        write_report([sweep], baseline="method=supervised")
    assert not (sweep / "report.md").exists()
    with pytest.raises(SystemExit):
        main([str(sweep / "0"), str(sweep / "2"), "--baseline", "method=unet"])
    err = capsys.readouterr().err
    assert "matches no group (groups: method=cps data.labeled=3; method=supervised data" in err


def test_seeds_on_other_volumes_are_refused(tmp_path):
    train_run(tmp_path / "0", "supervised", 0)
    train_run(tmp_path / "1", "cps", 0)
    train_run(tmp_path / "2", "cps", 1, volumes=VOLUMES[:19])
    with pytest.raises(ReportError, match="data.labeled=3: runs .* were scored on different vol"):
        write_report([tmp_path], baseline="method=supervised")


def test_runs_without_validation_have_only_last_and_say_so(tmp_path):
    train_run(tmp_path / "0", "supervised", 0, labels=("last",))
    train_run(tmp_path / "1", "cps", 0, shift=0.05, labels=("last",))
    write_report([tmp_path], baseline="method=supervised")
    rows = read_rows(tmp_path / "report.csv")
    assert {k[1] for k in rows} == {"last"}
    assert rows[("cps", "last", "overall")]["dice_significant"] == "True"
    text = (tmp_path / "report.md").read_text()
    assert "`method=cps data.labeled=3` has only the last checkpoint: no validation ran" in text
    assert "best on validation checkpoint" not in text


def test_paired_table_in_the_offline_wandb_run(sweep, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_report([sweep], baseline="method=supervised", wandb=True)
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")
    contents = run_contents(run_dir)
    (logged,) = [row for row in contents["history"] if "report/paired/path" in row]
    assert logged["report/paired/_type"] == "table-file"
    table = json.loads((run_dir / "files" / logged["report/paired/path"]).read_text())
    records = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len(records) == 2 * 2 * 2  # cps, dsaif x best, last x dice, hd95
    shifted = next(
        r for r in records
        if (r["model"], r["checkpoint"], r["metric"]) == ("ensemble", "last", "dice")
        and r["group"].startswith("method=cps")
    )  # fmt: skip
    assert shifted["baseline"] == BASELINE and shifted["significant"] is True
    assert shifted["mean_difference"] == pytest.approx(0.05, abs=0.002) and shifted["wins"] == 20
    logged = contents["summary"]["cps-l3/best/ensemble/overall/dice"]  # readable keys
    assert logged == pytest.approx(float(BASE_DICE.mean() + 0.05), abs=0.002)
    # a report job; these runs are no Hydra sweep (no multirun.yaml), so <experiment>/report
    assert contents["job_type"] == "report" and contents["group"] == "acdc_cpu/report"
    (sweep / "multirun.yaml").write_text("{}\n")  # as Hydra writes it: now one sweep's runs
    assert report_group(collect_runs([sweep]).runs) == f"acdc_cpu/{sweep.name}"


@pytest.mark.slow
def test_a_training_run_lands_in_wandb_ready_to_compare_and_draws_curves(run_task, monkeypatch):
    """A TINY cps run with the W&B logger: its offline run folder holds the flat comparison
    keys, the group and both checkpoints' test Dice; its CSV log gives the learning curves."""
    from tests.conftest import TINY

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in TINY if not o.startswith("logger=")]
    out, _, _ = run_task([*overrides, "method=cps", "logger=wandb", "seed=3"])
    import wandb

    wandb.teardown()  # wandb-core may hold the run file's last writes until it stops
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    contents = run_contents(run_dir)
    config = contents["config"]
    assert contents["group"] == f"synthetic/{out.name}"  # a single run is its own group
    assert (config["method"], config["filter"], config["seed"]) == ("cps", "none", 3)
    assert config["data.labeled"] == 1 and config["config"]["data"]["labeled"] == 1
    summary = contents["summary"]
    results = json.loads((out / "results.json").read_text())
    for label in ("best", "last"):
        assert summary[f"test/{label}/dice"] == pytest.approx(
            results["evaluations"][label]["models"]["ensemble"]["mean"]["dice"], abs=1e-5
        )
    targets = write_report([out], out / "report")
    assert targets["curves.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
