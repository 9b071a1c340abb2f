"""Finding the runs of a report and grouping them.

Runs are keyed by identity, not by file: a training run counts once whatever its folder or its
neighbours hold. Its identity is the ``run_id`` its results.json carries (kept across resumes
and copies of the folder); files from before ids were stored fall back to the folder the run
was trained in (``paths.output_dir``, else its checkpoints' folder) and its seed. Of the files
of one run, the live one counts (not a copy's older file, nor what a resume archived under
``.hydra/resume_*/``); the others are listed as not reported. A ``segssl test`` results.json is
a re-evaluation of the run whose checkpoint it tested, listed apart, never a seed. Metric values
of the wrong type or NaN leave that checkpoint and model of that run out, named, never averaged.

Runs whose resolved configs differ only in the seed (and in locations: data roots, output
folders; and in how they were watched: logger, progress bar) form a group; each group is
labelled by its method, its labeled count and the settings the user varied
(``segssl.commands.report.labels``). Reports only compare like with like: runs of different
splits or evaluation protocols are an error.
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

from segssl.commands.report.config_keys import LOCATION_KEYS, flatten
from segssl.commands.report.labels import label_groups
from segssl.evaluation.metrics import METRIC_NAMES
from segssl.evaluation.results import RESULTS_FILENAME, read_results

# results files written before ``selection_model`` was stored: the first of these it has
FALLBACK_SELECTION_MODELS = ("ensemble", "net", "student")
# checkpoint labels in the order reported, and how the report names them
CHECKPOINTS = {"best": "best on validation", "last": "last"}
IGNORED_TOP = {"seed", "tags", "paths", "hydra", "resume", "logger"}
# how a run is watched, not what it is: never split groups
DISPLAY_KEYS = {"trainer.enable_progress_bar", "trainer.enable_model_summary",
                "trainer.log_every_n_steps"}  # fmt: skip


class ReportError(ValueError):
    """Runs that cannot be reported together, or outputs that would be overwritten."""


@dataclass
class Run:
    """One ``results.json`` and the training config behind it. ``invalid`` lists the metric
    values that are not finite numbers (``key: problem``); the checkpoint and model they belong
    to are left out of ``evaluations()``."""

    path: Path
    results: dict[str, Any]
    invalid: list[str] = field(default_factory=list, init=False)
    _checked: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._checked, self.invalid = checked_evaluations(self)

    @property
    def config(self) -> dict[str, Any]:
        config = self.results["config"]
        # `segssl test` stores {"test": its own config, "run": the training run's}
        return config["run"] if self.is_reevaluation else config

    @property
    def is_reevaluation(self) -> bool:
        """A ``segssl test`` result: a checkpoint of a training run evaluated again."""
        return {"test", "run"} <= set(self.results["config"])

    @property
    def is_archived(self) -> bool:
        """Results a ``train resume=`` moved aside (``RUN/.hydra/resume_<time>/``) when it
        extended the run: the run's current results.json supersedes them."""
        parent = self.path.parent
        return parent.name.startswith("resume_") and parent.parent.name == ".hydra"

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def run_id(self) -> str | None:
        """The id of the training run: its own (``run_id``), or for a re-evaluation the id of
        the run it tested (``reevaluates.run_id``); None in files from before ids."""
        found = (
            (self.results.get("reevaluates") or {}).get("run_id")
            if self.is_reevaluation
            else self.results.get("run_id")
        )
        return found if isinstance(found, str) and found else None

    @property
    def trained_in(self) -> str:
        """The folder the training run was trained in (its stored ``paths.output_dir``, else
        the folder of its checkpoints, else this file's folder): the identity of files without
        a run id, also for copies and moved folders."""
        if self.is_reevaluation:
            named = (self.results.get("reevaluates") or {}).get("run_dir")
            if isinstance(named, str) and named:
                return named
        paths = self.config.get("paths")
        stored = paths.get("output_dir") if isinstance(paths, dict) else None
        if isinstance(stored, str) and stored:
            return stored
        return self.checkpoint_run or str(self.path.parent)

    @property
    def checkpoint_run(self) -> str | None:
        """The run folder of the tested checkpoint (``RUN/checkpoints/x.ckpt``), if it is one."""
        checkpoint = Path(self.results.get("checkpoint") or "")
        return str(checkpoint.parent.parent) if checkpoint.parent.name == "checkpoints" else None

    @property
    def folder_key(self) -> str:
        """The fallback identity: where the run was trained, and its seed."""
        return json.dumps([self.trained_in, self.seed], default=str)

    def folder_keys(self) -> set[str]:
        """Every (folder, seed) that names this run: the folder it was trained in, and that of
        its checkpoints (the same, unless the folder was moved before a re-evaluation)."""
        folders = {self.trained_in, self.checkpoint_run}
        paths = self.config.get("paths")
        stored = paths.get("output_dir") if isinstance(paths, dict) else None
        folders |= {stored} if isinstance(stored, str) and stored else set()
        return {json.dumps([f, self.seed], default=str) for f in folders if f}

    def same_run(self, other: Run) -> bool:
        """Both name the same training run: the same id, or, where either has none (a file
        from before ids), a training folder and the seed in common."""
        if self.run_id and other.run_id:
            return self.run_id == other.run_id
        return bool(self.folder_keys() & other.folder_keys())

    @property
    def identity_text(self) -> str:
        if self.run_id:
            return f"run id {self.run_id}"
        return f"trained in {self.trained_in}, seed {self.seed}"

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

    def stored_evaluations(self) -> dict[str, dict[str, Any]]:
        """Each tested checkpoint under its label (``best``, ``last``) with its ``models``, as
        stored; a results file from before both were tested has its one checkpoint only."""
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

    def evaluations(self) -> dict[str, dict[str, Any]]:
        """``stored_evaluations`` without the models whose metric values are not finite
        numbers (named in ``invalid``); a checkpoint left with no model is left out."""
        return self._checked

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


def checked_evaluations(run: Run) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The run's evaluations with only the models whose every metric value (``mean`` and
    ``per_class``, also in the top-level ``models`` of the selected checkpoint) is a finite
    number, and the problems found, each naming its key. A cost (``extra.training.
    seconds_per_step``) that is not a finite number is named too (and not used)."""
    problems: list[str] = []
    bad: set[tuple[str, str]] = set()
    stored = run.stored_evaluations()
    for label, evaluation in stored.items():
        where = f"evaluations.{label}.models" if run.results.get("evaluations") else "models"
        for model, summary in evaluation["models"].items():
            found = metric_problems(summary, f"{where}.{model}")
            if found:
                problems += found
                bad.add((label, model))
    if run.results.get("evaluations"):  # the top-level models: the selected checkpoint's
        selected = next(
            (k for k, e in stored.items() if e.get("checkpoint") == run.results["checkpoint"]),
            run.checkpoint_label,
        )
        for model, summary in run.results["models"].items():
            found = metric_problems(summary, f"models.{model}")
            if found:
                problems += found
                bad.add((selected, model))
    cost = ((run.results.get("extra") or {}).get("training") or {}).get("seconds_per_step")
    if cost is not None and not is_number(cost):
        problems.append(f"extra.training.seconds_per_step = {cost!r}: not a finite number")
    checked = {}
    for label, evaluation in stored.items():
        models = {m: v for m, v in evaluation["models"].items() if (label, m) not in bad}
        if models:
            checked[label] = {**evaluation, "models": models}
    return checked, problems


def metric_problems(summary: dict[str, Any], where: str) -> list[str]:
    """``KEY = VALUE: why`` for every metric of an aggregate that is missing or is not a
    finite number (a string such as ``"0.99"`` is not one: it is not averaged)."""
    places = [(f"{where}.mean", summary["mean"])]
    places += [(f"{where}.per_class.{c}", v) for c, v in summary["per_class"].items()]
    problems = []
    for key, metrics in places:
        if not isinstance(metrics, dict):
            problems.append(f"{key} = {metrics!r}: expected a JSON object of metrics")
            continue
        for metric in METRIC_NAMES:
            if metric not in metrics:
                problems.append(f"{key}.{metric}: missing")
            elif not is_number(metrics[metric]):
                problems.append(f"{key}.{metric} = {metrics[metric]!r}: not a finite number")
    return problems


def is_number(value: Any) -> bool:
    """A finite JSON number (not a string, a boolean, null, NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    """What was found under the report's paths: the training runs, each once; the ``segssl
    test`` re-evaluations (each with the reported run it tested, or None); the ``results.json``
    not reported (path, reason: unreadable, archived by a resume, another file of a run already
    counted); the runs reported with values left out (path, ``key: problem``); and the
    numbered jobs of sweeps that have no results."""

    runs: list[Run]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    reevaluations: list[tuple[Run, Run | None]] = field(default_factory=list)
    invalid: list[tuple[Path, str]] = field(default_factory=list)


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every training run under the given folders (recursively) or files, each once."""
    return collect_runs(paths).runs


def collect_runs(paths: Sequence[str | Path]) -> Sources:
    """Runs under ``paths``, keyed by identity (see the module text). A damaged
    ``results.json`` is skipped with a warning naming it and why (one killed or half-copied
    run must not hide the others), a sweep job without one is listed."""
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
    found: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for file in dict.fromkeys(f.resolve() for f in files):
        try:
            found.append(Run(file, read_results(file)))
        except (OSError, ValueError) as err:
            skipped.append((file, str(err).removeprefix(f"{file}: ")))
    training = [r for r in found if not r.is_reevaluation]
    runs, not_counted = one_file_per_run([r for r in training if not r.is_archived])
    skipped += not_counted
    for archived in (r for r in training if r.is_archived):
        live = next((r for r in runs if r.same_run(archived)), None)
        skipped.append((archived.path, archived_reason(archived, live)))
    reevaluations, not_counted = reevaluations_of(
        [r for r in found if r.is_reevaluation], runs
    )  # fmt: skip
    skipped += not_counted
    unusable = [r for r in runs if not r.evaluations()]
    for run in unusable:
        skipped.append((run.path, "no result with valid metric values: " + "; ".join(run.invalid)))
    runs = [r for r in runs if r not in unusable]
    invalid = [(r.path, problem) for r in runs for problem in r.invalid]
    invalid += [(r.path, problem) for r, _ in reevaluations for problem in r.invalid]
    for file, reason in skipped:
        print(f"segssl report: warning: skipped {file}: {reason}", file=sys.stderr)
    for file, problem in invalid:
        print(f"segssl report: warning: {file}: {problem}; left out", file=sys.stderr)
    missing = list(dict.fromkeys(m.resolve() for m in missing))
    for job in missing:
        print(
            f"segssl report: warning: sweep job {job} has no {RESULTS_FILENAME} "
            "(failed, killed or still running)",
            file=sys.stderr,
        )
    if not runs:
        where = ", ".join(map(str, paths))
        if reevaluations:
            raise ReportError(
                f"only `segssl test` re-evaluations under {where} ({len(reevaluations)} "
                f"{RESULTS_FILENAME}), no training run: a re-evaluation is not a seed; give "
                "the training runs' folders too, and the re-evaluations are listed with them"
            )
        raise ReportError(
            f"no readable {RESULTS_FILENAME} of a training run under {where} "
            f"(not reported: {'; '.join(f'{f}: {r}' for f, r in skipped)})"
        )
    return Sources(runs, skipped, missing, reevaluations, invalid)


def one_file_per_run(runs: Sequence[Run]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Each training run once: of the files naming the same run (copies of its folder), the
    newest result counts (an extension's, not the copy's from before it), the others are
    returned with the reason."""
    clusters: list[list[Run]] = []
    for run in runs:
        cluster = next((c for c in clusters if any(run.same_run(o) for o in c)), None)
        if cluster is None:
            clusters.append([run])
        else:
            cluster.append(run)
    kept, dropped = [], []
    for cluster in clusters:
        ordered = sorted(cluster, key=_preference)
        chosen = ordered[-1]
        kept.append(chosen)
        for run in cluster:
            if run is not chosen:
                dropped.append(
                    (run.path, f"same run as {chosen.path} ({chosen.identity_text}): counted once")
                )
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(kept, key=lambda r: order[id(r)]), dropped


def _preference(run: Run) -> tuple:
    """Newest result first; of equal copies, the one in the folder it was trained in."""
    home = str(Path(run.trained_in).expanduser().resolve()) == str(run.path.parent)
    return str(run.results["created"]), home, -len(run.path.parts)


def archived_reason(archived: Run, live: Run | None) -> str:
    """Why results a resume moved aside are not reported."""
    if live is not None:
        return f"archived by `train resume=` when the run was extended; {live.path} counts"
    return (
        "archived by `train resume=` when the run was extended; the extended run has no "
        f"{RESULTS_FILENAME} yet (still running or stopped)"
    )


def reevaluations_of(
    found: Sequence[Run], runs: Sequence[Run]
) -> tuple[list[tuple[Run, Run | None]], list[tuple[Path, str]]]:
    """Each ``segssl test`` result once (copies of it dropped), with the reported training
    run whose checkpoint it tested (None when that run is not in the report)."""
    seen: dict[str, Run] = {}
    listed: list[tuple[Run, Run | None]] = []
    dropped: list[tuple[Path, str]] = []
    for result in found:
        key = json.dumps(
            [result.run_id or result.folder_key, result.results["checkpoint"],
             result.results["split"], str(result.results["created"])]
        )  # fmt: skip
        if key in seen:
            dropped.append((result.path, f"a copy of the re-evaluation {seen[key].path}"))
            continue
        seen[key] = result
        listed.append((result, next((r for r in runs if r.same_run(result)), None)))
    return listed, dropped


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
    """The protocol without the network input size (a setting of the group, not the metric) and
    without how often validation computed distances (the tested metrics do not depend on it)."""
    protocol = run.results["protocol"]
    ignored = ("image_size", "patch_size", "val_distances_every")
    return {k: v for k, v in protocol.items() if k not in ignored}


def is_ignored(key: str) -> bool:
    parts = key.split(".")
    return (
        parts[0] in IGNORED_TOP
        or parts[-1] in LOCATION_KEYS
        or parts[-1] == "tags"
        or key in DISPLAY_KEYS
    )


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Groups of runs with the same config but the seed, in first-seen order, labelled."""
    return group_and_label(runs)[0]


def group_and_label(runs: Sequence[Run]) -> tuple[list[Group], list[str]]:
    """``group_runs`` and the notes on settings the groups differ in that their labels do not
    name (``segssl.commands.report.labels``)."""
    flats = [{k: v for k, v in flatten(r.config).items() if not is_ignored(k)} for r in runs]
    own = run_folder_keys(runs, flats)
    flats = [{k: v for k, v in flat.items() if k not in own} for flat in flats]
    groups: dict[str, Group] = {}
    for run, flat in zip(runs, flats, strict=True):
        key = json.dumps(flat, sort_keys=True)
        groups.setdefault(key, Group({k: json.loads(v) for k, v in flat.items()})).runs.append(run)
    found = sorted(groups.values(), key=_order)
    notes = label_groups(found)
    return found, notes


def run_folder_keys(runs: Sequence[Run], flats: Sequence[dict[str, str]]) -> set[str]:
    """Keys whose value names the run's own folder in any run (e.g. a logger's directory)."""
    keys: set[str] = set()
    for run, flat in zip(runs, flats, strict=True):
        folders = {str(run.path.parent), str((run.config.get("paths") or {}).get("output_dir"))}
        keys |= {k for k, v in flat.items() if any(f in v for f in folders if f != "None")}
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
    that agrees with it on the rest of the label (e.g. the same ``data.labeled``), else with the
    one that agrees with it on the settings the baselines differ in (``abd filter=dsaif`` with
    the supervised run of its labeled count, all of them ``filter=none``), else with the only
    baseline there is."""
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
        if not same and len(baselines) > 1:
            varied = [k for k in rest if len({b.label_parts.get(k) for b in baselines}) > 1]
            same = [b for b in baselines if all(b.label_parts.get(k) == rest[k] for k in varied)]
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
