"""The report's tables: summary rows over seeds, with the paired comparison merged in, as CSV
and Markdown text."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segssl.commands.report.runs import CHECKPOINTS, Group, ReportError, Run, is_number
from segssl.commands.report.statistics import (
    PAIRED_METRICS,
    group_labels,
    group_selection_model,
    mean_std,
)
from segssl.evaluation.metrics import EMPTY_MASK_POLICY, METRIC_NAMES
from segssl.evaluation.results import RESULTS_FILENAME

MODELS_TEXT = {"default": "the selection model of each method", "all": "all models"}
OVERALL = "overall"
PAIRED_FIELDS = ("diff", "ci_low", "ci_high", "p", "wins", "significant")
CSV_COLUMNS = (
    "group", "method", "labeled", "model", "n", "seeds", "split", "checkpoint", "class",
    *(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")), "seconds_per_step",
    "baseline", "volumes", *(f"{m}_{f}" for m in PAIRED_METRICS for f in PAIRED_FIELDS),
)  # fmt: skip
POLICY_TEXT = {
    EMPTY_MASK_POLICY: "a class absent from both prediction and reference scores Dice 1, "
    "HD95 0; absent from exactly one, Dice 0 and HD95 = ASD = the volume diagonal"
}


def report_models(group: Group, models: str) -> list[str]:
    """The models reported for a group: the selection model (``default``), ``all``, or a
    comma-separated list (those the group has)."""
    if models == "default":
        return [group_selection_model(group)]
    present: dict[str, None] = {}
    for run in group.runs:
        for evaluation in run.evaluations().values():
            present.update(dict.fromkeys(evaluation["models"]))
    if models == "all":
        return list(present)
    return [m for m in models.split(",") if m in present]


def summary_rows(groups: Sequence[Group], models: str, split: str) -> list[dict[str, Any]]:
    """One row per group, checkpoint (best, last: never averaged together), model and class
    (``overall`` = the mean over classes)."""
    rows = []
    for group in groups:
        for label in group_labels(group):
            for model in report_models(group, models):
                runs = [
                    r for r in group.runs
                    if model in r.evaluations().get(label, {}).get("models", {})
                ]  # fmt: skip
                summaries = [r.evaluations()[label]["models"][model] for r in runs]
                classes: dict[str, None] = {}
                for s in summaries:
                    classes.update(dict.fromkeys(s["per_class"]))
                for cls in [OVERALL, *classes]:
                    values = [
                        s["mean"] if cls == OVERALL else s["per_class"].get(cls) for s in summaries
                    ]
                    values = [v for v in values if v is not None]
                    if not values:
                        continue
                    row = {
                        "group": group.label,
                        "method": group.setting("method_name"),
                        "labeled": group.setting("data.labeled"),
                        "model": model,
                        "n": len(values),
                        "seeds": " ".join(str(r.seed) for r in runs),
                        "split": split,
                        "checkpoint": label,
                        "class": cls,
                    }
                    for metric in METRIC_NAMES:
                        row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(
                            [float(v[metric]) for v in values]
                        )
                    row["seconds_per_step"] = seconds_per_step(runs)
                    rows.append(row)
    if not rows:
        raise ReportError(f"--models {models}: none of these models is in the runs")
    return rows


def seconds_per_step(runs: Sequence[Any]) -> float | None:
    """The runs' mean training cost (``extra.training`` of results.json; older runs have none)."""
    found = [
        float(t["seconds_per_step"])
        for r in runs
        if is_number((t := (r.results.get("extra") or {}).get("training") or {}).get(
            "seconds_per_step"
        ))
    ]  # fmt: skip
    return sum(found) / len(found) if found else None


def merge_paired(rows: list[dict[str, Any]], paired: Sequence[dict[str, Any]]) -> None:
    """Put each comparison into the overall row of its group, checkpoint and model."""
    for result in paired:
        for row in rows:
            if (row["group"], row["checkpoint"], row["model"], row["class"]) == (
                result["group"], result["checkpoint"], result["model"], OVERALL
            ):  # fmt: skip
                metric = result["metric"]
                row["baseline"] = result["baseline"]
                row["volumes"] = result["volumes"]
                row[f"{metric}_diff"] = result["mean_difference"]
                row[f"{metric}_ci_low"] = result["ci_low"]
                row[f"{metric}_ci_high"] = result["ci_high"]
                row[f"{metric}_p"] = result["p_value"]
                row[f"{metric}_wins"] = result["wins"]
                row[f"{metric}_significant"] = result["significant"]


def csv_text(rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


def cell(metric: str, mean: float, std: float | None) -> str:
    digits = _digits(metric)
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def difference_cell(result: dict[str, Any]) -> str:
    """``+0.0123 [0.0040, 0.0210]``, with ``(n.s.)`` when the interval crosses zero."""
    digits = _digits(result["metric"])
    text = (
        f"{result['mean_difference']:+.{digits}f} "
        f"[{result['ci_low']:.{digits}f}, {result['ci_high']:.{digits}f}]"
    )
    return text if result["significant"] else f"{text} (n.s.)"


def markdown_text(
    rows: Sequence[dict[str, Any]],
    groups: Sequence[Group],
    split: str,
    protocol: dict[str, Any],
    sources: Sequence[str],
    out_dir: Path,
    models: str,
    skipped: Sequence[tuple[Path, str]] = (),
    missing: Sequence[Path] = (),
    paired: Sequence[dict[str, Any]] = (),
    paired_notes: Sequence[str] = (),
    baseline: str | None = None,
    reevaluations: Sequence[tuple[Run, Run | None]] = (),
    invalid: Sequence[tuple[Path, str]] = (),
    label_notes: Sequence[str] = (),
) -> str:
    units = protocol.get("distance_units", "unknown units")
    heads = ["Dice", "Jaccard", f"HD95 ({units})", f"ASD ({units})"]
    runs = [r for g in groups for r in g.runs]
    source = f"{len(runs)} results.json under {', '.join(sources)}, one per training run"
    if reevaluations:
        source += f", and {len(reevaluations)} `segssl test` re-evaluation(s), listed apart"
    dropped = len(skipped) + len(missing)
    if dropped:
        source += f"; {dropped} not reported (see below)"
    if invalid:
        source += f"; {len(invalid)} value(s) left out (see below)"
    lines = [
        "# segssl report",
        "",
        f"- **Split:** {split}",
        "- **Checkpoints:** each run is tested with the checkpoint best on validation (`best`) "
        "and the last one (`last`); they are reported apart, never averaged together.",
        f"- **Protocol:** {protocol_text(protocol, groups)}",
        f"- **Distances:** HD95 and ASD in {units}",
        f"- **Empty masks:** {POLICY_TEXT.get(protocol.get('empty_mask_policy'), '')} "
        f"(`{protocol.get('empty_mask_policy')}`)",
        "- **Statistics:** mean ± sample standard deviation (ddof = 1) over the seeds of each "
        "group, n = number of seeds (no std when n = 1); Dice, Jaccard, HD95, ASD per volume, "
        "averaged over the volumes of the split in each run (overall = mean over classes).",
        "- **Groups:** runs whose resolved configs differ only in the seed (and in locations "
        "such as data.root, and the logger); labelled by method, labeled count and the "
        "settings varied on the runs' command lines (`.hydra/overrides.yaml`).",
        f"- **Models:** {MODELS_TEXT.get(models, models)}",
        "- **Cost:** s/step = seconds per training step (data loading included, validation "
        "excluded), the mean over the group's runs, on the machine and load each ran under.",
        f"- **Source:** {source}",
        "- **Runs:** a training run counts once, by its run id (older files: the folder it was "
        "trained in and its seed), whatever else its folder holds: results a resume archived, "
        "copies and `segssl test` re-evaluations are not seeds.",
        f"- **Created:** {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        "",
    ]
    notes = list(label_notes)
    notes += [
        f"group `{g.label}` repeats a seed ({' '.join(str(r.seed) for r in g.runs)}): "
        "its runs are counted separately"
        for g in groups
        if len({json.dumps(r.seed) for r in g.runs}) < len(g.runs)
    ]
    notes += [
        f"group `{g.label}` has only the last checkpoint: no validation ran (e.g. "
        "`val_cases=0`), so there is no best-on-validation result"
        for g in groups
        if "best" not in group_labels(g) and "last" in group_labels(g)
    ]
    lines += [f"> Note: {n}" for n in notes] + ([""] if notes else [])
    for label in dict.fromkeys(r["checkpoint"] for r in rows):
        overall = [r for r in rows if r["class"] == OVERALL and r["checkpoint"] == label]
        lines += [f"## Overall, {CHECKPOINTS.get(label, label)} checkpoint (mean over classes)", ""]
        lines += _table(["group", "model", "n", "seeds", *heads, "s/step"],
                        [[r["group"], r["model"], r["n"], r["seeds"], *_cells(r), _cost(r)]
                         for r in overall])  # fmt: skip
        lines += [""]
    if baseline is not None:
        lines += paired_section(paired, paired_notes, baseline, units)
    for cls in dict.fromkeys(r["class"] for r in rows if r["class"] != OVERALL):
        lines += [f"## {cls}", ""]
        lines += _table(["group", "checkpoint", "model", "n", *heads],
                        [[r["group"], r["checkpoint"], r["model"], r["n"], *_cells(r)]
                         for r in rows if r["class"] == cls])  # fmt: skip
        lines += [""]
    lines += ["## Runs", ""]
    lines += _table(["group", "seed", "checkpoints", "results"],
                    [[g.label, r.seed, ", ".join(r.evaluations()), _relative(r.path, out_dir)]
                     for g in groups for r in g.runs])  # fmt: skip
    if reevaluations:
        lines += ["", *reevaluation_section(reevaluations, groups, out_dir, units)]
    if skipped or missing or invalid:
        lines += ["", "## Not reported", ""]
        lines += _table(["results", "why"],
                        [*([_relative(f, out_dir), f"skipped: {why}"] for f, why in skipped),
                         *([_relative(f, out_dir), f"left out: {why}"] for f, why in invalid),
                         *([_relative(j, out_dir), f"sweep job without {RESULTS_FILENAME} "
                            "(failed, killed or still running)"] for j in missing)])  # fmt: skip
    return "\n".join(lines) + "\n"


def reevaluation_section(
    reevaluations: Sequence[tuple[Run, Run | None]],
    groups: Sequence[Group],
    out_dir: Path,
    units: str,
) -> list[str]:
    """``segssl test`` results, one row per result and model, each beside the run whose
    checkpoint it tested: evaluations of a run again, never seeds of its group."""
    group_of = {id(r): g.label for g in groups for r in g.runs}
    lines = [
        "## Re-evaluations (`segssl test`)",
        "",
        "A checkpoint of a training run tested again (possibly on another split or data): "
        "listed with its run, not counted as a seed nor averaged with the tables above.",
        "",
    ]
    body = []
    for result, run in reevaluations:
        tested = (
            f"{group_of.get(id(run), '')} seed {run.seed}: {_relative(run.path, out_dir)}"
            if run is not None
            else f"not in this report (trained in {result.trained_in}, seed {result.seed})"
        )
        checkpoint = Path(str(result.results.get("checkpoint") or "unknown")).name
        evaluations = result.evaluations()
        models = next(iter(evaluations.values()), {}).get("models", {})
        chosen = result.selection_model
        shown = {chosen: models[chosen]} if chosen in models else models
        if not shown:
            shown = {"": None}
        for model, summary in shown.items():
            cells = (
                [cell(m, float(summary["mean"][m]), None) for m in METRIC_NAMES]
                if summary is not None
                else ["left out (see below)"] * len(METRIC_NAMES)
            )
            body.append(
                [_relative(result.path, out_dir), tested, result.results["split"],
                 checkpoint, model, *cells]
            )  # fmt: skip
    heads = ["Dice", "Jaccard", f"HD95 ({units})", f"ASD ({units})"]
    return lines + _table(["results", "run", "split", "checkpoint", "model", *heads], body)


def paired_section(
    paired: Sequence[dict[str, Any]], notes: Sequence[str], baseline: str, units: str
) -> list[str]:
    """The comparison table: one row per group and checkpoint, Dice and HD95 side by side."""
    confidence = next((r["confidence"] for r in paired), 0.95)
    lines = [
        f"## Paired comparison with `{baseline}`",
        "",
        "Group minus baseline on the same test volumes, each volume's value first averaged over "
        f"the seeds of its group: mean difference with a {confidence:.0%} bootstrap interval "
        "over volumes (BCa), Wilcoxon signed-rank p-value, and the volumes where the group is "
        "better (wins / volumes; higher Dice, lower HD95 is better). (n.s.) = the interval "
        "crosses zero: not significant.",
        "",
    ]
    cells: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for result in paired:
        key = (result["group"], result["baseline"], result["checkpoint"])
        cells.setdefault(key, {})[result["metric"]] = result
    head = ["group", "baseline", "checkpoint", "volumes"]
    for metric in PAIRED_METRICS:
        name = "Dice" if metric == "dice" else f"{metric.upper()} ({units})"
        head += [f"Δ {name} [CI]", "p", "wins"]
    body = []
    for (group, base, label), by_metric in cells.items():
        row: list[Any] = [group, base, label, next(iter(by_metric.values()))["volumes"]]
        for metric in PAIRED_METRICS:
            result = by_metric.get(metric)
            row += (
                [difference_cell(result), f"{result['p_value']:.3g}",
                 f"{result['wins']}/{result['volumes']}"]
                if result else ["", "", ""]
            )  # fmt: skip
        body.append(row)
    lines += _table(head, body) if body else ["(no group could be compared)"]
    lines += [""] + [f"> Note: {n}" for n in notes] + ([""] if notes else [])
    return lines


def protocol_text(protocol: dict[str, Any], groups: Sequence[Group]) -> str:
    sizes = sorted({_size(r.results["protocol"]) for g in groups for r in g.runs})
    inference = protocol.get("inference", "unknown inference")
    text = f"{inference} inference at {' / '.join(sizes)}"
    stride = protocol.get("stride")
    if stride:
        text += f", stride {'x'.join(map(str, stride)) if isinstance(stride, list) else stride}"
    threshold = protocol.get("threshold")
    text += f", foreground probability > {threshold}" if threshold is not None else ", argmax"
    return text


# -- helpers -----------------------------------------------------------------------------------
def _digits(metric: str) -> int:
    return 4 if metric in ("dice", "jaccard") else 2


def _size(protocol: dict[str, Any]) -> str:
    size = protocol.get("image_size") or protocol.get("patch_size")
    if isinstance(size, list | tuple):
        return "x".join(map(str, size))
    return "unknown size" if size is None else f"{size}x{size}"


def _cells(row: dict[str, Any]) -> list[str]:
    return [cell(m, row[f"{m}_mean"], row[f"{m}_std"]) for m in METRIC_NAMES]


def _cost(row: dict[str, Any]) -> str:
    return "" if row.get("seconds_per_step") is None else f"{row['seconds_per_step']:.2f}"


def _table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in body]


def _md(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value).replace("|", "\\|")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)
