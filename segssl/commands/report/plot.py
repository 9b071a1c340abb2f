"""The report's figure: mean Dice per group and checkpoint, coloured by what varies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OVERALL = "overall"


@dataclass
class Series:
    """Bars drawn in one colour with one legend entry: ``bars`` maps a category (an x tick) to
    its summary row."""

    name: str
    bars: dict[str, dict[str, Any]]


def bar_series(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[Series], str]:
    """The categories (x ticks), the coloured series and the legend's title. With several
    labeled counts each count is a series (one colour per ``data.labeled``, bars side by side in
    a group's category); with one, each group is its own colour (a single colour for every bar
    would say nothing), its best and last checkpoint side by side."""
    overall = [r for r in rows if r["class"] == OVERALL]
    models_per_group: dict[str, set[str]] = {}
    for row in overall:
        models_per_group.setdefault(row["group"], set()).add(row["model"])
    several_models = max(len(m) for m in models_per_group.values()) > 1
    several_checkpoints = len({r["checkpoint"] for r in overall}) > 1
    by_labeled = len({str(r["labeled"]) for r in overall}) > 1
    categories: dict[str, None] = {}
    series: dict[str, Series] = {}
    for row in overall:
        if by_labeled:
            name = _category(row, several_models, several_checkpoints)
            key = f"labeled={row['labeled']}"
        else:
            name = _category(row, several_models, several_checkpoints)
            key = _without_labeled(row["group"]) or str(row["method"])
        categories[name] = None
        series.setdefault(key, Series(key, {})).bars[name] = row
    title = "data.labeled" if by_labeled else f"group (data.labeled={overall[0]['labeled']})"
    return list(categories), list(series.values()), title


def plot_dice(rows: Sequence[dict[str, Any]], target: Path, title: str) -> Path:
    """Bars of the overall mean Dice with sample-std error bars (none when n = 1): one category
    per group and checkpoint (best, last: two bars, never one number), per model when a group
    reports several; coloured per ``data.labeled`` when it varies, else per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, series, legend_title = bar_series(rows)
    by_labeled = legend_title == "data.labeled"  # else one colour per group
    width = 0.8 / max(len(series), 1) if by_labeled else 0.8
    fig, ax = plt.subplots(figsize=(max(5.0, 2.0 * len(names) + 1.5), 4.5))
    for i, item in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width if by_labeled else 0.0
        xs = [names.index(n) + offset for n in item.bars]
        means = [r["dice_mean"] for r in item.bars.values()]
        errors = [math.nan if r["dice_std"] is None else r["dice_std"] for r in item.bars.values()]
        ax.bar(
            xs, means, width, yerr=errors, capsize=3, label=item.name, color=f"C{i % 10}"
        )  # fmt: skip
        for x, row in zip(xs, item.bars.values(), strict=True):
            ax.annotate(f"n={row['n']}", (x, 0.01), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0, ha="right"
                  if len(names) > 3 else "center")  # fmt: skip
    ax.set_ylabel("Dice (mean over classes)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(title=legend_title, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


def _without_labeled(label: str) -> str:
    return " ".join(w for w in label.split(" ") if not w.startswith("data.labeled="))


def _category(row: dict[str, Any], with_model: bool, with_checkpoint: bool) -> str:
    """The group label without its ``data.labeled=`` part (the same for every bar, or said
    by the series)."""
    name = _without_labeled(row["group"]) or str(row["method"])
    name = f"{name} [{row['model']}]" if with_model else name
    return f"{name} ({row['checkpoint']})" if with_checkpoint else name
