"""The report's figure: mean Dice per method and checkpoint, one bar series per labeled count."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OVERALL = "overall"


def plot_dice(rows: Sequence[dict[str, Any]], target: Path, title: str) -> Path:
    """Bars of the overall mean Dice with sample-std error bars (none when n = 1): one category
    per group without its labeled count and per checkpoint (best, last: two bars, never one
    number), per model when a group reports several; one series per ``data.labeled``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = [r for r in rows if r["class"] == OVERALL]
    models_per_group: dict[str, set[str]] = {}
    for row in overall:
        models_per_group.setdefault(row["group"], set()).add(row["model"])
    several_models = max(len(m) for m in models_per_group.values()) > 1
    several_checkpoints = len({r["checkpoint"] for r in overall}) > 1
    categories: dict[str, None] = {}
    bars: dict[str, dict[str, dict[str, Any]]] = {}
    for row in overall:
        name = _category(row, several_models, several_checkpoints)
        categories[name] = None
        bars.setdefault(str(row["labeled"]), {})[name] = row
    names = list(categories)
    width = 0.8 / max(len(bars), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 2.0 * len(names) + 1.5), 4.5))
    for i, (labeled, series) in enumerate(bars.items()):
        xs = [names.index(n) + (i - (len(bars) - 1) / 2) * width for n in series]
        means = [r["dice_mean"] for r in series.values()]
        errors = [math.nan if r["dice_std"] is None else r["dice_std"] for r in series.values()]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=f"labeled={labeled}")
        for x, row in zip(xs, series.values(), strict=True):
            ax.annotate(f"n={row['n']}", (x, 0.01), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0, ha="right"
                  if len(names) > 3 else "center")  # fmt: skip
    ax.set_ylabel("Dice (mean over classes)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(title="data.labeled", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


def _category(row: dict[str, Any], with_model: bool, with_checkpoint: bool) -> str:
    """The group label without its ``data.labeled=`` part."""
    words = [w for w in row["group"].split(" ") if not w.startswith("data.labeled=")]
    name = " ".join(words) or str(row["method"])
    name = f"{name} [{row['model']}]" if with_model else name
    return f"{name} ({row['checkpoint']})" if with_checkpoint else name
