"""The ``report`` command: mean ± std over seeds of the runs in some folders, best and last
checkpoints apart, paired comparisons with a baseline group, and learning curves.

``runs`` finds and groups the runs, ``statistics`` compares groups volume by volume,
``markdown`` writes the tables, ``plot`` and ``curves`` the figures, ``wandb`` an optional copy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segssl.commands.report.markdown import csv_text, markdown_text, merge_paired, summary_rows
from segssl.commands.report.runs import (
    ReportError,
    Run,
    baseline_pairs,
    check_comparable,
    collect_runs,
    group_and_label,
)
from segssl.commands.report.statistics import compare_pairs
from segssl.utils.atomic import write_text

__all__ = ["OUTPUTS", "ReportError", "main", "write_report"]

OUTPUTS = ("report.md", "report.csv", "report.png", "curves.png")


def write_report(
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    models: str = "default",
    baseline: str | None = None,
    overwrite: bool = False,
    wandb: bool = False,
) -> dict[str, Path]:
    """Write report.md, report.csv, report.png (and curves.png when the runs have CSV logs)
    for the runs under ``paths``; with ``baseline`` (a group label such as
    ``method=supervised``), compare every group with it volume by volume."""
    out = Path(out_dir if out_dir is not None else paths[0]).expanduser()
    if out.is_file():
        out = out.parent
    targets = {name: out / name for name in OUTPUTS}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise ReportError(f"report exists: {', '.join(existing)}; pass --overwrite to replace it")
    found = collect_runs(paths)
    runs = found.runs
    split, protocol = check_comparable(runs)
    groups, label_notes = group_and_label(runs)
    rows = summary_rows(groups, models, split)
    paired: list[dict] = []
    notes: list[str] = []
    if baseline is not None:
        paired, notes = compare_pairs(baseline_pairs(groups, baseline))
        merge_paired(rows, paired)
    sources = [str(Path(p)) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    write_text(targets["report.csv"], csv_text(rows))
    text = markdown_text(
        rows, groups, split, protocol, sources, out, models, found.skipped, found.missing,
        paired=paired, paired_notes=notes, baseline=baseline,
        reevaluations=found.reevaluations, invalid=found.invalid, label_notes=label_notes,
    )  # fmt: skip
    write_text(targets["report.md"], text)
    from segssl.commands.report.curves import plot_learning_curves
    from segssl.commands.report.plot import plot_dice

    title = f"Mean Dice ± sample std over seeds\n{split} split"
    plot_dice(rows, targets["report.png"], title=title)
    curves = plot_learning_curves(
        {g.label: [r.path.parent for r in g.runs] for g in groups},
        targets["curves.png"],
        title="Validation Dice against step: mean over seeds, band = min to max",
    )
    if curves is None:
        del targets["curves.png"]
    if wandb:
        from segssl.commands.report.wandb import log_report

        figures = [p for name, p in targets.items() if name.endswith(".png")]
        log_report(
            rows, paired, figures, out, split=split, protocol=protocol, group=report_group(runs)
        )
    return targets


def report_group(runs: Sequence[Run]) -> str:
    """The W&B group the report joins: the reported runs' own group when they share one (one
    multirun), else ``<experiment>/report``."""
    from segssl.utils.loggers import run_group

    groups = set()
    experiments = set()
    for run in runs:
        experiment = run.config.get("experiment_name") or "segssl"
        experiments.add(str(experiment))
        groups.add(run_group(str(experiment), run.path.parent))
    if len(groups) == 1:
        return groups.pop()
    return f"{'+'.join(sorted(experiments))}/report"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m segssl report",
        description="Mean ± sample std over seeds of the results.json under run folders "
        "(a multirun folder works), grouped by configuration, the best-on-validation and the "
        "last checkpoint apart; writes report.md, report.csv, report.png and curves.png.",
    )
    parser.add_argument("paths", nargs="+", help="run folders, multirun folders or results.json")
    parser.add_argument("--out", help="output folder (default: the first PATH)")
    parser.add_argument(
        "--models",
        default="default",
        help="default (each method's selection model), all, or NAME[,NAME...]",
    )
    parser.add_argument(
        "--baseline",
        help="a group label, e.g. 'method=supervised': compare every group with it on the same "
        "test volumes (Dice and HD95 differences, bootstrap CI, Wilcoxon p, wins)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument(
        "--wandb", action="store_true", help="also log to a W&B run (offline unless logged in)"
    )
    args = parser.parse_args(argv)
    try:
        targets = write_report(
            args.paths,
            args.out,
            models=args.models,
            baseline=args.baseline,
            overwrite=args.overwrite,
            wandb=args.wandb,
        )
    except (ReportError, ValueError, FileNotFoundError) as err:
        print(f"segssl report: error: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    for path in targets.values():
        print(f"wrote {path}")
