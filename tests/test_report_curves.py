"""Learning curves from constructed CSV logs."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from segssl.commands.report.curves import (
    METRICS_CSV,
    mean_curve,
    plot_learning_curves,
    read_series,
)


def write_log(run: Path, rows: list[dict]) -> Path:
    path = run / METRICS_CSV
    path.parent.mkdir(parents=True)
    columns = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return run


def test_series_keep_the_later_value_of_a_resumed_step(tmp_path):
    """Lightning logs validation after step 10 at step 9: read back as 10, the step of the
    checkpoint it saved (``best_step10``)."""
    run = write_log(
        tmp_path / "run",
        [
            {"step": 9, "train/loss": 1.0},
            {"step": 9, "val/dice": 0.2},
            {"step": 19, "val/dice": 0.4},
            {"step": 19, "val/dice": 0.5},  # logged again after a resume
        ],
    )
    series = read_series(run)
    assert series["val/dice"] == {10: 0.2, 20: 0.5}
    assert series["train/loss"] == {10: 1.0}


def test_mean_curve_over_seeds_uses_common_steps():
    steps, mean, low, high = mean_curve([{1: 0.2, 2: 0.4, 3: 0.9}, {1: 0.4, 2: 0.6}])
    assert list(steps) == [1, 2]
    assert np.allclose(mean, [0.3, 0.5]) and np.allclose(low, [0.2, 0.4])
    assert np.allclose(high, [0.4, 0.6])
    assert mean_curve([{}]) is None


def test_plot_has_a_consensus_panel_only_when_logged(tmp_path):
    two_nets = [
        write_log(
            tmp_path / f"cps{seed}",
            [
                {"step": s, "val/dice": 0.1 * s + seed, "val/error_consensus/net1-net2": 0.5}
                for s in (1, 2, 3)
            ],
        )
        for seed in (0, 1)
    ]
    one_net = [write_log(tmp_path / "sup", [{"step": s, "val/dice": 0.05 * s} for s in (1, 2)])]
    target = plot_learning_curves(
        {"method=cps": two_nets, "method=supervised": one_net}, tmp_path / "curves.png", "t"
    )
    assert target is not None and target.stat().st_size > 1000

    from PIL import Image

    wide = Image.open(target).size
    plot_learning_curves({"method=supervised": one_net}, tmp_path / "one.png", "t")
    narrow = Image.open(tmp_path / "one.png").size
    assert wide[0] > 1.5 * narrow[0]  # the second (consensus) panel


def test_no_logs_no_figure(tmp_path):
    assert plot_learning_curves({"a": [tmp_path]}, tmp_path / "x.png", "t") is None
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_curve_steps_are_the_checkpoint_steps_of_a_real_run(run_task):
    """A TINY run validating every 2 of 4 steps: the curve's steps are 2 and 4, the steps its
    checkpoints and validation overlays are named after (Lightning logged them at 1 and 3)."""
    from tests.conftest import TINY

    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    out, _, _ = run_task([*overrides, "trainer.max_steps=4", "method=supervised"])
    with open(out / METRICS_CSV, newline="") as handle:
        logged = {int(r["step"]) for r in csv.DictReader(handle) if r.get("val/dice")}
    assert logged == {1, 3}  # Lightning's own count
    steps = set(read_series(out)["val/dice"])
    assert steps == {2, 4}
    saved = {int(re.match(r"best_step(\d+)_", p.name)[1]) for p in out.glob("checkpoints/best_*")}
    assert saved and saved <= steps
