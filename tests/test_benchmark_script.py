"""``scripts/benchmark.sh``: the laptop benchmark's grid, run as parallel multiruns, ends in a
paired report over every run of the grid (here on generated data, two steps per run)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from segssl.data.synthetic import ensure_synthetic_dataset
from tests.conftest import REPO, SMALL_SYNTHETIC
from tests.helpers.scripts import run_script

SCRIPT = REPO / "scripts" / "benchmark.sh"
TINY = [
    "data.image_size=32",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "data.num_workers=0",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.mark.slow
def test_parallel_grid_ends_in_a_paired_report(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset(tmp_path / "synthetic", **SMALL_SYNTHETIC)
    # relative paths are the caller's: the script runs from the checkout but resolves them first
    done = run_script(
        "benchmark.sh",
        ["synthetic", "sweep", *TINY],
        cwd=tmp_path,
        METHODS="supervised,cps",
        FILTERS="none",
        SEEDS="0,1",
        LABELED="1",
        JOBS="2",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sweep = tmp_path / "sweep"
    runs = sorted(sweep.rglob("results.json"))
    seeds_by_part = {}
    for path in runs:
        config = json.loads(path.read_text())["config"]
        assert config["data"]["root"] == str(root) and config["trainer"]["max_steps"] == 2
        part = path.relative_to(sweep).parts[0]
        seeds_by_part.setdefault(part, set()).add((config["method_name"], config["seed"]))
    # the seeds dealt out between the two multiruns, each running the whole method list
    assert seeds_by_part == {
        "part0": {("supervised", 0), ("cps", 0)},
        "part1": {("supervised", 1), ("cps", 1)},
    }
    with open(sweep / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cps = [r for r in rows if r["method"] == "cps" and r["class"] == "overall"]
    assert {r["checkpoint"] for r in cps} == {"best", "last"}, rows
    for row in cps:  # both seeds in one group, paired against supervised on the test volumes
        assert (row["n"], row["seeds"], row["split"]) == ("2", "0 1", "test"), row
        assert row["baseline"].startswith("method=supervised") and row["dice_p"], row
    assert "supervised" in (sweep / "report.md").read_text()
    assert (sweep / "curves.png").is_file() and (sweep / "report.png").is_file()


def test_bad_jobs_is_refused_before_any_run(tmp_path: Path) -> None:
    done = run_script(
        "benchmark.sh", [str(tmp_path / "none"), str(tmp_path / "sweep")], cwd=tmp_path, JOBS="two"
    )
    assert done.returncode == 2 and "JOBS must be a positive whole number" in done.stderr
    assert not (tmp_path / "sweep").exists()


def test_usage_without_a_root() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
