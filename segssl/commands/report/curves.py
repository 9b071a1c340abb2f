"""Learning curves read from the runs' own CSV logs: validation Dice against step per group,
mean over seeds with a min-max band, and the two networks' error consensus where it was logged."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METRICS_CSV = Path("csv") / "version_0" / "metrics.csv"
DICE = "val/dice"
CONSENSUS_PREFIX = "val/error_consensus"
# Lightning logs a metric at the number of optimizer steps done *before* the batch that logged
# it (validation included: it runs before that count moves on), while checkpoints and
# ``trainer.global_step`` count that batch's step too: validation after step 10 is logged at 9
# and saved as ``best_step10``. Steps are shifted by this, so curves and checkpoint names agree.
LOGGED_STEP_OFFSET = 1


def read_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every logged column of a run as ``{column: {step: value}}``, steps counted as the
    checkpoints count them (``LOGGED_STEP_OFFSET``); a resumed run that logged a step twice
    keeps the later value."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        return {}
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                step = int(float(row.get("step") or "")) + LOGGED_STEP_OFFSET
            except ValueError:
                continue
            for column, text in row.items():
                if column in ("step", "epoch") or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    series.setdefault(column, {})[step] = value
    return series


def consensus_column(series: Mapping[str, Mapping[int, float]]) -> str | None:
    """The error-consensus column of a two-network run, if it logged one."""
    found = sorted(c for c in series if c.startswith(CONSENSUS_PREFIX))
    return found[0] if found else None


def mean_curve(
    runs: Sequence[Mapping[int, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps logged by every run, with the mean and the min / max over runs at each."""
    runs = [r for r in runs if r]
    if not runs:
        return None
    steps = sorted(set.intersection(*(set(r) for r in runs)))
    if not steps:
        return None
    values = np.array([[r[s] for s in steps] for r in runs])
    return np.array(steps), values.mean(0), values.min(0), values.max(0)


def plot_learning_curves(
    groups: Mapping[str, Sequence[Path]], target: Path, title: str
) -> Path | None:
    """One panel of validation Dice per group, a second of error consensus when any group
    logged it. Returns None (and says so) when no run has a CSV log."""
    per_group = {label: [read_series(run) for run in runs] for label, runs in groups.items()}
    if not any(s for series in per_group.values() for s in series):
        log.warning("No run has a CSV log (%s): no learning curves drawn", METRICS_CSV)
        return None
    has_consensus = any(consensus_column(s) for series in per_group.values() for s in series)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if has_consensus else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.2), squeeze=False)
    for index, (label, series) in enumerate(per_group.items()):
        colour = f"C{index % 10}"
        n = sum(1 for s in series if s.get(DICE))
        _draw(axes[0][0], [s.get(DICE, {}) for s in series], f"{label} (n={n})", colour)
        if has_consensus:
            consensus = [s.get(consensus_column(s) or "", {}) for s in series]
            _draw(axes[0][1], consensus, label, colour)
    axes[0][0].set(
        xlabel="training step (as in checkpoint names)", ylabel="validation Dice (selection model)"
    )
    if has_consensus:
        axes[0][1].set(
            xlabel="training step (as in checkpoint names)",
            ylabel="error consensus (Dice of the error masks)",
        )
    from matplotlib.ticker import MaxNLocator

    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    from segssl.utils.atomic import write_with

    write_with(target, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return target


def _draw(ax, runs: Sequence[Mapping[int, float]], label: str, colour: str) -> None:
    curve = mean_curve(runs)
    if curve is None:
        return
    steps, mean, low, high = curve
    ax.plot(steps, mean, color=colour, label=label, marker=".", markersize=3)
    if len([r for r in runs if r]) > 1:
        ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
