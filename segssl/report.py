"""The ``report`` command: mean ± std over seeds of the runs in some folders.

Every ``results.json`` under the given folders is one run. Runs whose resolved configs differ
only in the seed (and in locations: data roots, output folders) form a group; each group is
labelled by its method, its labeled count and whatever else tells the groups apart. Reports
only compare like with like: runs of different splits or evaluation protocols are an error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segssl.evaluation.metrics import EMPTY_MASK_POLICY, METRIC_NAMES
from segssl.evaluation.results import RESULTS_FILENAME, read_results
from segssl.utils.atomic import write_text

# the models checkpoints are selected on: two networks' ensemble, a single network, a mean
# teacher's student (see each method's ``selection_model``)
SELECTION_MODELS = ("ensemble", "net", "student")
MODELS_TEXT = {"default": "the selection model (ensemble, net or student)", "all": "all models"}
OUTPUTS = ("report.md", "report.csv", "report.png")
OVERALL = "overall"
CSV_COLUMNS = (
    "group", "method", "labeled", "model", "n", "seeds", "split", "checkpoint", "class",
    *(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")),
)  # fmt: skip
# keys that say where things are, not what was run: never split groups
LOCATION_KEYS = {"root", "save_dir", "dirpath", "cache_dir", "output_dir", "default_root_dir"}
IGNORED_TOP = {"seed", "tags", "paths", "hydra", "resume"}
LABEL_FIRST = ("method_name", "data.labeled")
LABEL_NEXT = ("experiment_name", "data.name")
LABEL_NAMES = {"method_name": "method", "experiment_name": "experiment", "data.name": "data"}
POLICY_TEXT = {
    EMPTY_MASK_POLICY: "a class absent from both prediction and reference scores Dice 1, "
    "HD95 0; absent from exactly one, Dice 0 and HD95 = ASD = the volume diagonal"
}


class ReportError(ValueError):
    """Runs that cannot be reported together, or outputs that would be overwritten."""


@dataclass
class Run:
    """One ``results.json`` and the training config behind it."""

    path: Path
    results: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        config = self.results["config"]
        # `segssl test` stores {"test": its own config, "run": the training run's}
        return config["run"] if {"test", "run"} <= set(config) else config

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def checkpoint_kind(self) -> str:
        checkpoint = self.results.get("checkpoint")
        if not checkpoint:
            return "unknown"
        name = Path(checkpoint).name
        if name.startswith("best"):
            return "best on validation"
        return "last" if name.startswith("last") else name


@dataclass
class Group:
    """Runs of one configuration (all seeds)."""

    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    def setting(self, key: str) -> Any:
        return self.settings.get(key)


# -- collecting and grouping ---------------------------------------------------------------
@dataclass
class Sources:
    """What was found under the report's paths: the readable runs, the ``results.json`` that
    could not be read (path, reason), and the numbered jobs of sweeps that have none."""

    runs: list[Run]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every readable results.json under the given folders (recursively) or given directly."""
    return collect_runs(paths).runs


def collect_runs(paths: Sequence[str | Path]) -> Sources:
    """Runs under ``paths``; a damaged ``results.json`` is skipped with a warning naming it (one
    killed or half-copied run must not hide the others), a sweep job without one is listed."""
    files: list[Path] = []
    missing: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(path.rglob(RESULTS_FILENAME))
            missing += missing_jobs(path)
        else:
            raise ReportError(f"{path}: no such run folder or results file")
    if not files:
        raise ReportError(f"no {RESULTS_FILENAME} under {', '.join(map(str, paths))}")
    runs, skipped = [], []
    for file in dict.fromkeys(f.resolve() for f in files):
        try:
            runs.append(Run(file, read_results(file)))
        except (OSError, ValueError) as err:
            reason = str(err).removeprefix(f"{file}: ")
            print(f"segssl report: warning: skipped {file}: {reason}", file=sys.stderr)
            skipped.append((file, reason))
    missing = list(dict.fromkeys(m.resolve() for m in missing))
    for job in missing:
        print(
            f"segssl report: warning: sweep job {job} has no {RESULTS_FILENAME} "
            "(failed, killed or still running)",
            file=sys.stderr,
        )
    if not runs:
        raise ReportError(
            f"no readable {RESULTS_FILENAME} under {', '.join(map(str, paths))} "
            f"(skipped: {'; '.join(f'{f}: {r}' for f, r in skipped)})"
        )
    return Sources(runs, skipped, missing)


def missing_jobs(folder: Path) -> list[Path]:
    """Numbered job folders of the Hydra sweeps under ``folder`` that hold no results.json. A
    sweep folder is one with Hydra's ``multirun.yaml``, or with numbered job folders of which
    at least one has results."""
    found = []
    candidates = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for sweep in candidates:
        jobs = [p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]
        if not jobs:
            continue
        has_results = [(job / RESULTS_FILENAME).exists() for job in jobs]
        if (sweep / "multirun.yaml").is_file() or any(has_results):
            found += [job for job, done in zip(jobs, has_results, strict=True) if not done]
    return sorted(found, key=lambda p: (str(p.parent), int(p.name)))


def check_comparable(runs: Sequence[Run]) -> tuple[str, dict[str, Any]]:
    """The one split and protocol of all runs; an error naming the runs if they mix any."""
    splits = _by_value(runs, lambda r: r.results["split"])
    if len(splits) > 1:
        raise ReportError(f"the runs mix splits ({_examples(splits)}); report each split apart")
    protocols = _by_value(runs, lambda r: json.dumps(comparable_protocol(r), sort_keys=True))
    if len(protocols) > 1:
        raise ReportError(
            f"the runs mix evaluation protocols ({_examples(protocols)}); report them apart"
        )
    return runs[0].results["split"], comparable_protocol(runs[0])


def comparable_protocol(run: Run) -> dict[str, Any]:
    """The protocol without the network input size (a setting of the group, not the metric)."""
    protocol = run.results["protocol"]
    return {k: v for k, v in protocol.items() if k not in ("image_size", "patch_size")}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> JSON values (hashable and comparable)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat


def is_ignored(key: str) -> bool:
    parts = key.split(".")
    return parts[0] in IGNORED_TOP or parts[-1] in LOCATION_KEYS or parts[-1] == "tags"


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Groups of runs with the same config but the seed, in first-seen order, labelled."""
    flats = [{k: v for k, v in flatten(r.config).items() if not is_ignored(k)} for r in runs]
    own = run_folder_keys(runs, flats)
    flats = [{k: v for k, v in flat.items() if k not in own} for flat in flats]
    groups: dict[str, Group] = {}
    for run, flat in zip(runs, flats, strict=True):
        key = json.dumps(flat, sort_keys=True)
        groups.setdefault(key, Group({k: json.loads(v) for k, v in flat.items()})).runs.append(run)
    found = sorted(groups.values(), key=_order)
    keys = label_keys(found)
    for group in found:
        group.label = " ".join(f"{LABEL_NAMES.get(k, k)}={group.setting(k)}" for k in keys)
    return found


def run_folder_keys(runs: Sequence[Run], flats: Sequence[dict[str, str]]) -> set[str]:
    """Keys whose value names the run's own folder in any run (e.g. a logger's directory)."""
    keys: set[str] = set()
    for run, flat in zip(runs, flats, strict=True):
        folders = {str(run.path.parent), str((run.config.get("paths") or {}).get("output_dir"))}
        keys |= {k for k, v in flat.items() if any(f in v for f in folders if f != "None")}
    return keys


def label_keys(groups: Sequence[Group]) -> list[str]:
    """Method and labeled count, then as few other differing keys as tell the groups apart."""
    keys = list(LABEL_FIRST)
    others = {k for g in groups for k in g.settings} - set(keys)
    candidates = [k for k in LABEL_NEXT if k in others] + sorted(others - set(LABEL_NEXT))
    for key in candidates:
        labels = [tuple(_text(g.setting(k)) for k in keys) for g in groups]
        if len(set(labels)) == len(labels):
            break
        extended = [
            (*label, _text(g.setting(key))) for label, g in zip(labels, groups, strict=True)
        ]
        if len(set(extended)) > len(set(labels)):
            keys.append(key)
    return keys


# -- statistics ------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None


def report_models(group: Group, models: str) -> list[str]:
    """The models reported for a group: the selection model (``default``), ``all``, or a
    comma-separated list (those the group has)."""
    present: dict[str, None] = {}
    for run in group.runs:
        present.update(dict.fromkeys(run.results["models"]))
    if models == "default":
        chosen = [m for m in SELECTION_MODELS if m in present][:1]
        if not chosen:
            raise ReportError(
                f"{group.runs[0].path}: no selection model {SELECTION_MODELS} (has "
                f"{sorted(present)}); "
                "choose with --models NAME[,NAME] or --models all"
            )
        return chosen
    if models == "all":
        return list(present)
    return [m for m in models.split(",") if m in present]


def summary_rows(groups: Sequence[Group], models: str, split: str) -> list[dict[str, Any]]:
    """One row per group, model and class (``overall`` = the mean over classes)."""
    rows = []
    for group in groups:
        for model in report_models(group, models):
            runs = [r for r in group.runs if model in r.results["models"]]
            summaries = [r.results["models"][model] for r in runs]
            classes: dict[str, None] = {}
            for s in summaries:
                classes.update(dict.fromkeys(s["per_class"]))
            for cls in [OVERALL, *classes]:
                values = [
                    s["mean"] if cls == OVERALL else s["per_class"].get(cls) for s in summaries
                ]
                values = [v for v in values if v is not None]
                row = {
                    "group": group.label,
                    "method": group.setting("method_name"),
                    "labeled": group.setting("data.labeled"),
                    "model": model,
                    "n": len(values),
                    "seeds": " ".join(str(r.seed) for r in runs),
                    "split": split,
                    "checkpoint": ", ".join(sorted({r.checkpoint_kind for r in runs})),
                    "class": cls,
                }
                for metric in METRIC_NAMES:
                    row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(
                        [float(v[metric]) for v in values]
                    )
                rows.append(row)
    if not rows:
        raise ReportError(f"--models {models}: none of these models is in the runs")
    return rows


# -- outputs -------------------------------------------------------------------------------
def csv_text(rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


def cell(metric: str, mean: float, std: float | None) -> str:
    digits = 4 if metric in ("dice", "jaccard") else 2
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


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
) -> str:
    units = protocol.get("distance_units", "unknown units")
    heads = ["Dice", "Jaccard", f"HD95 ({units})", f"ASD ({units})"]
    kinds = sorted({r.checkpoint_kind for g in groups for r in g.runs})
    runs = [r for g in groups for r in g.runs]
    dropped = len(skipped) + len(missing)
    lines = [
        "# segssl report",
        "",
        f"- **Split:** {split}",
        f"- **Checkpoint:** {', '.join(kinds)}",
        f"- **Protocol:** {protocol_text(protocol, groups)}",
        f"- **Distances:** HD95 and ASD in {units}",
        f"- **Empty masks:** {POLICY_TEXT.get(protocol.get('empty_mask_policy'), '')} "
        f"(`{protocol.get('empty_mask_policy')}`)",
        "- **Statistics:** mean ± sample standard deviation (ddof = 1) over the seeds of each "
        "group, n = number of seeds (no std when n = 1); Dice, Jaccard, HD95, ASD per volume, "
        "averaged over the volumes of the split in each run (overall = mean over classes).",
        "- **Groups:** runs whose resolved configs differ only in the seed (and in locations "
        "such as data.root).",
        f"- **Models:** {MODELS_TEXT.get(models, models)}",
        f"- **Source:** {len(runs)} results.json under {', '.join(sources)}"
        + (f"; {dropped} not reported (see below)" if dropped else ""),
        f"- **Created:** {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        "",
    ]
    notes = [
        f"group `{g.label}` repeats a seed ({' '.join(str(r.seed) for r in g.runs)}): "
        "its runs are counted separately"
        for g in groups
        if len({json.dumps(r.seed) for r in g.runs}) < len(g.runs)
    ]
    lines += [f"> Note: {n}" for n in notes] + ([""] if notes else [])
    overall = [r for r in rows if r["class"] == OVERALL]
    lines += ["## Overall (mean over classes)", ""]
    lines += _table(["group", "model", "n", "seeds", "checkpoint", *heads],
                    [[r["group"], r["model"], r["n"], r["seeds"], r["checkpoint"], *_cells(r)]
                     for r in overall])  # fmt: skip
    for cls in dict.fromkeys(r["class"] for r in rows if r["class"] != OVERALL):
        lines += ["", f"## {cls}", ""]
        lines += _table(["group", "model", "n", *heads],
                        [[r["group"], r["model"], r["n"], *_cells(r)]
                         for r in rows if r["class"] == cls])  # fmt: skip
    lines += ["", "## Runs", ""]
    lines += _table(["group", "seed", "checkpoint", "results"],
                    [[g.label, r.seed, r.checkpoint_kind, _relative(r.path, out_dir)]
                     for g in groups for r in g.runs])  # fmt: skip
    if skipped or missing:
        lines += ["", "## Not reported", ""]
        lines += _table(["results", "why"],
                        [*([_relative(f, out_dir), f"skipped: {why}"] for f, why in skipped),
                         *([_relative(j, out_dir), f"sweep job without {RESULTS_FILENAME} "
                            "(failed, killed or still running)"] for j in missing)])  # fmt: skip
    return "\n".join(lines) + "\n"


def protocol_text(protocol: dict[str, Any], groups: Sequence[Group]) -> str:
    sizes = sorted({_size(r.results["protocol"]) for g in groups for r in g.runs})
    inference = protocol.get("inference", "unknown inference")
    text = f"{inference} inference at {' / '.join(sizes)}"
    if protocol.get("stride"):
        text += f", stride {'x'.join(map(str, protocol['stride']))}"
    threshold = protocol.get("threshold")
    text += f", foreground probability > {threshold}" if threshold is not None else ", argmax"
    return text


def write_report(
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    models: str = "default",
    overwrite: bool = False,
    wandb: bool = False,
) -> dict[str, Path]:
    """Write report.md, report.csv and report.png for the runs under ``paths``."""
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
    groups = group_runs(runs)
    rows = summary_rows(groups, models, split)
    sources = [str(Path(p)) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    write_text(targets["report.csv"], csv_text(rows))
    write_text(
        targets["report.md"],
        markdown_text(
            rows, groups, split, protocol, sources, out, models, found.skipped, found.missing
        ),
    )
    from segssl.report_plot import plot_dice

    kinds = ", ".join(sorted({r.checkpoint_kind for r in runs}))
    title = f"Mean Dice ± sample std over seeds\n{split} split, {kinds} checkpoint"
    plot_dice(rows, targets["report.png"], title=title)
    if wandb:
        from segssl.report_wandb import log_report

        log_report(rows, targets["report.png"], out, split=split, protocol=protocol)
    return targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m segssl report",
        description="Mean ± sample std over seeds of the results.json under run folders "
        "(a multirun folder works), grouped by configuration; writes report.md, report.csv "
        "and report.png.",
    )
    parser.add_argument("paths", nargs="+", help="run folders, multirun folders or results.json")
    parser.add_argument("--out", help="output folder (default: the first PATH)")
    parser.add_argument(
        "--models",
        default="default",
        help="default (the selection model: ensemble, net or student), all, or NAME[,NAME...]",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument(
        "--wandb", action="store_true", help="also log to a W&B run (offline unless logged in)"
    )
    args = parser.parse_args(argv)
    try:
        targets = write_report(
            args.paths, args.out, models=args.models, overwrite=args.overwrite, wandb=args.wandb
        )
    except (ReportError, ValueError, FileNotFoundError) as err:
        print(f"segssl report: error: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    for path in targets.values():
        print(f"wrote {path}")


# -- helpers -----------------------------------------------------------------------------------
def _by_value(runs: Sequence[Run], value) -> dict[str, list[Run]]:
    found: dict[str, list[Run]] = {}
    for run in runs:
        found.setdefault(value(run), []).append(run)
    return found


def _examples(found: dict[str, list[Run]]) -> str:
    return "; ".join(f"{k}: {len(v)} run(s), e.g. {v[0].path}" for k, v in found.items())


def _order(group: Group) -> tuple:
    """Groups by method, then labeled count (numerically), then the rest of the config."""
    labeled = group.setting("data.labeled")
    number = labeled if isinstance(labeled, int | float) else math.inf
    return str(group.setting("method_name")), number, str(labeled), json.dumps(group.settings)


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _size(protocol: dict[str, Any]) -> str:
    size = protocol.get("image_size") or protocol.get("patch_size")
    if isinstance(size, list | tuple):
        return "x".join(map(str, size))
    return "unknown size" if size is None else f"{size}x{size}"


def _cells(row: dict[str, Any]) -> list[str]:
    return [cell(m, row[f"{m}_mean"], row[f"{m}_std"]) for m in METRIC_NAMES]


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
