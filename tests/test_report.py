"""``segssl report``: runs grouped by configuration, mean ± sample std over seeds in CSV and
Markdown, the Dice figure, refusal to mix splits or protocols or to overwrite a report."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from segssl.commands.report import ReportError, main, write_report
from segssl.evaluation.results import write_results

PROTOCOL = {"inference": "slice-wise", "image_size": 256, "distance_units": "mm"}
CLASSES = ("RV", "Myo", "LV")


def aggregate(dice: float, hd95: float) -> dict:
    """An aggregate() result whose per-class values are known offsets of the mean."""
    per_class = {
        c: {"dice": dice + d, "jaccard": dice / 2 + d, "hd95": hd95 + 2 * d, "asd": hd95 / 4}
        for c, d in zip(CLASSES, (-0.1, 0.0, 0.1), strict=True)
    }
    mean = {"dice": dice, "jaccard": dice / 2, "hd95": hd95, "asd": hd95 / 4}
    return {"mean": mean, "per_class": per_class, "num_cases": 20}


def fake_run(
    folder: Path, method: str, seed: int, dice: float, hd95: float, split: str = "test", **kw
) -> Path:
    """A run folder as `segssl train` leaves it (results.json with its resolved config)."""
    networks = ["net"] if method == "supervised" else ["net1", "net2", "ensemble"]
    offset = {"net1": 0.01, "net2": 0.02}  # the networks score a little below the ensemble
    models = {name: aggregate(dice - offset.get(name, 0.0), hd95) for name in networks}
    config = {
        "method_name": method,
        "seed": seed,
        "experiment_name": "acdc",
        "tags": ["acdc", method, "labeled=3"],
        "data": {"name": "acdc", "labeled": 3, "root": f"/machine{seed}/ACDC"},  # location only
        "method": {"_target_": f"segssl.methods.{method}", "optimizer": {"lr": 0.01}},
        "paths": {"output_dir": str(folder)},
        "callbacks": {"model_checkpoint": {"dirpath": f"{folder}/checkpoints"}},
        "trainer": {"max_steps": 30000, "log_to": f"{folder}/logs"},  # run folder: not a setting
    }
    folder.mkdir(parents=True)
    write_results(
        folder / "results.json",
        split=split,
        checkpoint=f"{folder}/checkpoints/best_step200_dice{dice:.4f}.ckpt",
        protocol={**PROTOCOL, **kw.get("protocol", {})},
        models=models,
        config=config,
        extra={"training": {"seconds_per_step": kw["seconds"]}} if "seconds" in kw else None,
    )
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two seeds of CPS, one of the supervised baseline, as multirun job folders."""
    root = tmp_path / "multirun" / "2024-01-01_00-00-00"
    fake_run(root / "0", "cps", 0, dice=0.80, hd95=3.0, seconds=2.0)
    fake_run(root / "1", "cps", 1, dice=0.90, hd95=5.0, seconds=4.0)
    fake_run(root / "2", "supervised", 0, dice=0.75, hd95=6.0)
    return root


def read_csv(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open() as handle:
        return {(r["group"], r["model"], r["class"]): r for r in csv.DictReader(handle)}


def test_means_and_sample_stds_over_seeds(sweep):
    targets = write_report([sweep])
    assert set(targets) == {"report.md", "report.csv", "report.png"}
    rows = read_csv(sweep / "report.csv")
    cps = rows[("method=cps data.labeled=3", "ensemble", "overall")]
    assert cps["n"] == "2" and cps["seeds"] == "0 1" and cps["split"] == "test"
    assert cps["checkpoint"] == "best" and cps["method"] == "cps"
    assert float(cps["dice_mean"]) == pytest.approx(0.85)
    assert float(cps["dice_std"]) == pytest.approx(math.sqrt(0.005))  # ddof=1: 0.0707
    assert float(cps["hd95_mean"]) == pytest.approx(4.0)
    assert float(cps["hd95_std"]) == pytest.approx(math.sqrt(2.0))
    assert float(cps["asd_mean"]) == pytest.approx(1.0)
    assert float(cps["seconds_per_step"]) == pytest.approx(3.0)  # the runs' mean cost
    rv = rows[("method=cps data.labeled=3", "ensemble", "RV")]
    assert float(rv["dice_mean"]) == pytest.approx(0.75)
    assert float(rv["hd95_mean"]) == pytest.approx(3.8)
    supervised = rows[("method=supervised data.labeled=3", "net", "overall")]
    assert supervised["n"] == "1" and supervised["dice_std"] == ""
    assert supervised["seconds_per_step"] == ""  # a run from before the timer
    assert float(supervised["dice_mean"]) == pytest.approx(0.75)
    # only the selection models by default
    assert {k[1] for k in rows} == {"ensemble", "net"}

    text = (sweep / "report.md").read_text()
    assert "**Split:** test" in text and "## Overall, best on validation checkpoint" in text
    assert "slice-wise inference at 256x256" in text and "HD95 and ASD in mm" in text
    assert "sample standard deviation (ddof = 1)" in text
    assert "| method=cps data.labeled=3 | ensemble | 2 | 0 1 | 0.8500 ± " \
           "0.0707 | 0.4250 ± 0.0354 | 4.00 ± 1.41 | 1.00 ± 0.35 | 3.00 |" in text  # fmt: skip
    assert "| method=supervised data.labeled=3 | net | 1 | 0 | 0.7500 | " \
           "0.3750 | 6.00 | 1.50 |" in text  # fmt: skip
    assert (
        "## RV" in text
        and "| method=cps data.labeled=3 | best | ensemble | 2 | 0.7500 ± 0.0707" in text
    )
    assert text.count("results.json |") == 3  # the runs table names each source
    assert (sweep / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_models_other_settings_and_output_folder(sweep, tmp_path):
    fake_run(sweep / "3", "cps", 0, dice=0.5, hd95=9.0)
    (sweep / "3" / "results.json").write_text(
        (sweep / "3" / "results.json").read_text().replace('"lr": 0.01', '"lr": 0.05')
    )
    write_report([sweep], tmp_path / "rep", models="all")
    rows = read_csv(tmp_path / "rep" / "report.csv")
    groups = {k[0] for k in rows}
    assert groups == {
        "method=cps data.labeled=3 method.optimizer.lr=0.01",
        "method=cps data.labeled=3 method.optimizer.lr=0.05",
        "method=supervised data.labeled=3 method.optimizer.lr=0.01",
    }
    net1 = rows[("method=cps data.labeled=3 method.optimizer.lr=0.01", "net1", "overall")]
    assert float(net1["dice_mean"]) == pytest.approx(0.84) and net1["n"] == "2"
    assert rows[("method=cps data.labeled=3 method.optimizer.lr=0.05", "net2", "LV")]["n"] == "1"


def test_mixing_splits_or_protocols_is_an_error(sweep, tmp_path):
    fake_run(sweep / "3", "cps", 2, dice=0.8, hd95=3.0, split="val")
    with pytest.raises(ReportError, match=r"mix splits \(test: 3 run\(s\).*; val: 1 run\(s\)"):
        write_report([sweep])
    other = tmp_path / "la"
    fake_run(other / "0", "cps", 0, dice=0.8, hd95=3.0, protocol={"distance_units": "voxels"})
    with pytest.raises(ReportError, match="mix evaluation protocols"):
        write_report([sweep / "0", other])
    assert not (sweep / "report.md").exists()


def test_refuses_to_overwrite_and_command_line(sweep, capsys):
    write_report([sweep])
    (sweep / "report.md").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep)])
    assert exit_info.value.code == 1
    assert "report.md" in capsys.readouterr().err and (sweep / "report.md").read_text() == "mine"
    main([str(sweep), "--overwrite", "--models", "net1,net"])
    assert "wrote" in capsys.readouterr().out
    assert {k[1] for k in read_csv(sweep / "report.csv")} == {"net1", "net"}
    with pytest.raises(SystemExit):
        main([str(sweep / "nowhere")])
    assert "no such run folder" in capsys.readouterr().err


def test_wandb_offline_run(sweep, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_report([sweep], wandb=True)
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
