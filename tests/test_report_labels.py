"""Report group labels name what the user varied on the command line (Hydra's overrides of each
run folder, resumes included), by group choice; other differing settings go to a note; the
Dice figure is coloured by what varies. Run folders are written as `segssl train` leaves them
(`.hydra/` files of a real Hydra composition, results.json with the resolved config)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from segssl.commands.report import write_report
from segssl.commands.report.plot import bar_series
from segssl.evaluation.results import write_results
from tests.conftest import compose_config

PROTOCOL = {"inference": "slice-wise", "image_size": 32, "distance_units": "mm"}


def summary(dice: float) -> dict:
    mean = {"dice": dice, "jaccard": dice / 2, "hd95": 3.0, "asd": 1.0}
    return {"mean": mean, "per_class": {"RV": mean}, "num_cases": 2}


def hydra_run(
    folder: Path, overrides: list[str], dice: float, resumed: list[str] | None = None
) -> Path:
    """A finished run folder: `.hydra/` as segssl writes it (config unresolved, Hydra config
    with its choices, the task overrides) and results.json with the resolved config; with
    ``resumed``, the run was extended by `train resume=... <resumed>` (its record in
    `.hydra/resume_<time>/`, the config it ended with in results.json)."""
    cfg = compose_config("train", overrides, folder)
    hydra = folder / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    (hydra / "hydra.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": cfg.hydra})))
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]
    (hydra / "config.yaml").write_text(OmegaConf.to_yaml(task))
    if resumed:
        record = hydra / "resume_2026-01-01_00-00-00"
        record.mkdir()
        (record / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resumed)))
        task = compose_config("train", [*overrides, *resumed], folder)
        with open_dict(task):
            del task["hydra"]
    config = OmegaConf.to_container(task, resolve=True)
    models = {"net": summary(dice)} if "method=supervised" in overrides else {
        "net1": summary(dice), "net2": summary(dice), "ensemble": summary(dice)
    }  # fmt: skip
    write_results(
        folder / "results.json",
        split="test",
        checkpoint=f"{folder}/checkpoints/best_step100_dice{dice:.4f}.ckpt",
        protocol=PROTOCOL,
        models=models,
        config=config,
        run_id=folder.name + str(abs(hash(str(folder)))),
    )
    return folder


def groups_of(path: Path) -> dict[str, str]:
    """group label -> seeds, from report.csv's overall rows of the best checkpoint."""
    with path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["class"] == "overall"]
    return {r["group"]: r["seeds"] for r in rows if r["checkpoint"] == "best"}


def test_an_extended_run_is_labelled_by_the_key_its_resume_set(tmp_path):
    """2 methods x 2 seeds at trainer.max_steps=300, one cps seed extended to 320 by a resume:
    the extended run is its own group, labelled by trainer.max_steps (set on its resume command
    line), not by method.rampup_steps (which follows it) nor None for supervised; how a run was
    logged or displayed (logger, progress bar) does not split a group."""
    sweep = tmp_path / "multirun"
    common = ["trainer.max_steps=300", "data.labeled=1"]
    hydra_run(sweep / "0", ["method=cps", "seed=0", *common], 0.8)
    hydra_run(sweep / "1", ["method=cps", "seed=1", *common], 0.9, ["trainer.max_steps=320"])
    hydra_run(sweep / "2", ["method=supervised", "seed=0", *common, "logger=csv"], 0.7)
    hydra_run(
        sweep / "3",
        ["method=supervised", "seed=1", *common, "logger=wandb",
         "trainer.enable_progress_bar=false"],
        0.6,
    )  # fmt: skip
    write_report([sweep])
    assert groups_of(sweep / "report.csv") == {
        "method=cps data.labeled=1 trainer.max_steps=300": "0",
        "method=cps data.labeled=1 trainer.max_steps=320": "1",
        "method=supervised data.labeled=1 trainer.max_steps=300": "0 1",
    }
    text = (sweep / "report.md").read_text()
    assert "rampup" not in text and "=None" not in text


def test_two_sweeps_are_labelled_by_their_swept_choice_and_key(tmp_path):
    """Two sweeps reported together, one per network and step count: labels say `model=` by
    its choice and trainer.max_steps, nothing else (the model's own keys, and method keys that
    follow them, vary too)."""
    first, second = tmp_path / "a", tmp_path / "b"
    for seed in (0, 1):
        hydra_run(first / str(seed), ["method=cps", f"seed={seed}", "trainer.max_steps=20"], 0.5)
        hydra_run(
            second / str(seed),
            ["method=cps", f"seed={seed}", "model=attention_unet2d", "trainer.max_steps=300"],
            0.6,
        )
    write_report([first, second], tmp_path / "report")
    assert groups_of(tmp_path / "report" / "report.csv") == {
        "method=cps data.labeled=2 model=unet2d trainer.max_steps=20": "0 1",
        "method=cps data.labeled=2 model=attention_unet2d trainer.max_steps=300": "0 1",
    }
    assert "> Note: groups also differ" not in (tmp_path / "report" / "report.md").read_text()


def test_a_setting_no_command_line_changed_is_labelled_once_and_noted(tmp_path):
    """Two runs with the same command line whose configs differ in two settings nobody set (a
    default changed between them): one key tells them apart in the labels, and a note names the
    other with each group's value."""
    old = hydra_run(tmp_path / "old", ["method=cps", "seed=0"], 0.5)
    new = hydra_run(tmp_path / "new", ["method=cps", "seed=1"], 0.6)
    results = new / "results.json"
    results.write_text(
        results.read_text()
        .replace('"lr": 0.01', '"lr": 0.02')
        .replace('"weight_decay": 0.0001', '"weight_decay": 0.0003')
    )
    write_report([old, new], tmp_path / "report")
    labels = set(groups_of(tmp_path / "report" / "report.csv"))
    assert labels == {
        "method=cps data.labeled=2 method.optimizer.lr=0.01",
        "method=cps data.labeled=2 method.optimizer.lr=0.02",
    }
    text = (tmp_path / "report" / "report.md").read_text()
    assert (
        "`method.optimizer.weight_decay`: 0.0001 in `method=cps data.labeled=2 "
        "method.optimizer.lr=0.01`; 0.0003 in `method=cps data.labeled=2 "
        "method.optimizer.lr=0.02`" in text
    )


def rows(groups: dict[str, tuple[int, float]], checkpoints=("best", "last")) -> list[dict]:
    """report.csv-like overall rows: group label -> (labeled, dice)."""
    return [
        {"group": g, "method": g.split()[0].split("=")[1], "labeled": labeled, "model": "net",
         "class": "overall", "checkpoint": c, "dice_mean": dice, "dice_std": None, "n": 1}
        for g, (labeled, dice) in groups.items() for c in checkpoints
    ]  # fmt: skip


def test_one_labeled_count_colours_each_group(tmp_path):
    """With one labeled count, bars are coloured per group (best and last of a group alike);
    with two, per labeled count."""
    one = rows(
        {"method=cps data.labeled=3": (3, 0.8), "method=supervised data.labeled=3": (3, 0.6)}
    )
    names, series, title = bar_series(one)
    assert [s.name for s in series] == ["method=cps", "method=supervised"]
    assert set(series[0].bars) == {"method=cps (best)", "method=cps (last)"}
    assert title == "group (data.labeled=3)" and len(names) == 4
    two = rows({"method=cps data.labeled=3": (3, 0.8), "method=cps data.labeled=7": (7, 0.9)})
    _, series, title = bar_series(two)
    assert [s.name for s in series] == ["labeled=3", "labeled=7"] and title == "data.labeled"


def test_the_figure_of_one_labeled_count_has_a_colour_per_method(tmp_path):
    """The drawn report.png of a cps and a supervised group at one labeled count holds the
    first two colours of the palette, not one colour for every bar."""
    hydra_run(tmp_path / "0", ["method=cps", "seed=0"], 0.8)
    hydra_run(tmp_path / "1", ["method=supervised", "seed=0"], 0.7)
    write_report([tmp_path])
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "report.png").convert("RGB")).reshape(-1, 3)

    def count(colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels.astype(int) - rgb).sum(1) < 10).sum())

    assert count("#1f77b4") > 500 and count("#ff7f0e") > 500  # matplotlib's C0 and C1


@pytest.mark.parametrize("resumed", [False, True])
def test_override_keys_of_resumes_are_read(tmp_path, resumed):
    from segssl.commands.report.labels import read_facts

    folder = hydra_run(
        tmp_path / "run", ["+experiment=acdc_cpu", "seed=2", "data.root=/x"], 0.5,
        ["trainer.max_steps=400"] if resumed else None,
    )  # fmt: skip
    facts = read_facts(folder)
    assert facts.overrides == ["experiment", *(["trainer.max_steps"] if resumed else [])]
    assert facts.choices["experiment"] == "acdc_cpu"
    assert facts.derived["method.rampup_steps"] == "trainer.max_steps"
