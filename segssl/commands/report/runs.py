"""Finding the runs of a report and grouping them.

Every ``results.json`` under the given folders is one run. Runs whose resolved configs differ
only in the seed (and in locations: data roots, output folders) form a group; each group is
labelled by its method, its labeled count and whatever else tells the groups apart. Reports
only compare like with like: runs of different splits or evaluation protocols are an error.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segssl.evaluation.results import RESULTS_FILENAME, read_results

# results files written before ``selection_model`` was stored: the first of these it has
FALLBACK_SELECTION_MODELS = ("ensemble", "net", "student")
# checkpoint labels in the order reported, and how the report names them
CHECKPOINTS = {"best": "best on validation", "last": "last"}
# keys that say where things are, not what was run: never split groups
LOCATION_KEYS = {"root", "save_dir", "dirpath", "cache_dir", "output_dir", "default_root_dir"}
IGNORED_TOP = {"seed", "tags", "paths", "hydra", "resume"}
LABEL_FIRST = ("method_name", "data.labeled")
LABEL_NEXT = ("filter_name", "filter._target_", "experiment_name", "data.name")
LABEL_NAMES = {
    "method_name": "method",
    "filter_name": "filter",
    "filter._target_": "filter",  # runs from before filter_name was stored
    "experiment_name": "experiment",
    "data.name": "data",
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
    def checkpoint_label(self) -> str:
        """``best`` / ``last`` for the top-level (selected) checkpoint, else its file name."""
        checkpoint = self.results.get("checkpoint")
        if not checkpoint:
            return "unknown"
        name = Path(checkpoint).name
        return next((label for label in CHECKPOINTS if name.startswith(label)), name)

    @property
    def checkpoint_kind(self) -> str:
        return CHECKPOINTS.get(self.checkpoint_label, self.checkpoint_label)

    def evaluations(self) -> dict[str, dict[str, Any]]:
        """Each tested checkpoint under its label (``best``, ``last``) with its ``models``; a
        results file from before both were tested has its one checkpoint only."""
        stored = self.results.get("evaluations")
        if stored:
            return {str(k): v for k, v in stored.items()}
        return {
            self.checkpoint_label: {
                "checkpoint": self.results.get("checkpoint"),
                "selection": self.checkpoint_kind,
                "models": self.results["models"],
            }
        }

    @property
    def selection_model(self) -> str | None:
        """The model checkpoints were selected on (stored by ``train``; older files: the first
        of ``FALLBACK_SELECTION_MODELS`` they have)."""
        stored = self.results.get("selection_model")
        if stored:
            return str(stored)
        return next((m for m in FALLBACK_SELECTION_MODELS if m in self.results["models"]), None)

    def per_volume(self, label: str, model: str, metric: str) -> dict[str, float]:
        """``{volume: metric}`` of one checkpoint and model, the mean over classes per volume
        (as ``overall``), from ``per_case_<label>.csv`` (or ``per_case.csv`` of the selected
        checkpoint in older run folders)."""
        folder = self.path.parent
        path = folder / f"per_case_{label}.csv"
        if not path.is_file() and label == self.checkpoint_label:
            path = folder / "per_case.csv"
        if not path.is_file():
            raise ReportError(
                f"{folder}: no per_case_{label}.csv with per-volume metrics of the {label} "
                "checkpoint (a paired comparison needs them)"
            )
        values: dict[str, list[float]] = {}
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("model") == model:
                    try:
                        values.setdefault(row["case"], []).append(float(row[metric]))
                    except (KeyError, TypeError, ValueError) as err:
                        raise ReportError(f"{path}: bad {metric!r} value in {row}") from err
        if not values:
            raise ReportError(f"{path}: no rows of model {model!r}")
        return {case: float(np.mean(v)) for case, v in values.items()}


@dataclass
class Group:
    """Runs of one configuration (all seeds)."""

    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    label: str = ""
    # the label's parts, name -> shown value (e.g. {"method": "cps", "data.labeled": "3"})
    label_parts: dict[str, str] = field(default_factory=dict)

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
        group.label_parts = {LABEL_NAMES.get(k, k): _label_value(k, group.setting(k)) for k in keys}
        group.label = " ".join(f"{k}={v}" for k, v in group.label_parts.items())
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


def parse_label(spec: str) -> dict[str, str]:
    """``'method=supervised data.labeled=3'`` -> ``{"method": "supervised", ...}``."""
    parts = {}
    for word in spec.split():
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise ReportError(f"--baseline {spec!r}: expected NAME=VALUE words, got {word!r}")
        parts[name] = value
    if not parts:
        raise ReportError("--baseline: empty; give a group label such as 'method=supervised'")
    return parts


def baseline_pairs(groups: Sequence[Group], spec: str) -> list[tuple[Group, Group]]:
    """(group, its baseline) for every group that is not a baseline. The baseline groups are
    those whose label has every NAME=VALUE of ``spec``; each group is paired with the baseline
    that agrees with it on the rest of the label (e.g. the same ``data.labeled``), or with the
    only baseline there is."""
    wanted = parse_label(spec)
    baselines = [g for g in groups if all(g.label_parts.get(k) == v for k, v in wanted.items())]
    if not baselines:
        labels = "; ".join(g.label for g in groups)
        raise ReportError(f"--baseline {spec!r} matches no group (groups: {labels})")
    pairs = []
    for group in groups:
        if group in baselines:
            continue
        rest = {k: v for k, v in group.label_parts.items() if k not in wanted}
        same = [
            b for b in baselines
            if all(b.label_parts.get(k, v) == v for k, v in rest.items())
        ]  # fmt: skip
        candidates = same or (baselines if len(baselines) == 1 else [])
        if len(candidates) != 1:
            found = "; ".join(b.label for b in candidates or baselines)
            raise ReportError(
                f"--baseline {spec!r}: group {group.label!r} has "
                f"{'several' if candidates else 'no'} matching baseline ({found}); "
                "name the baseline more exactly"
            )
        pairs.append((group, candidates[0]))
    return pairs


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


def _label_value(key: str, value: Any) -> str:
    """A setting as a label shows it: a class path by its last name."""
    text = str(value)
    return text.rsplit(".", 1)[-1] if key.endswith("._target_") else text


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
