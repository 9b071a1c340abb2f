"""Evaluation outputs: ``results.json`` (summary), per-case CSV, and a terminal table.

``results.json`` has a fixed schema so ``report`` and later comparisons can read any run:
``split``, ``checkpoint``, ``protocol``, ``models`` (name -> ``aggregate`` dict), ``config``,
``created`` (plus ``extra``, ``evaluations`` and ``selection_model`` when given: the model
the method selects checkpoints on and reports, which older files lack). A training run's file
names the run (``run_id``, kept across resumes and copies of its folder), a ``segssl test``
file the run it re-evaluates (``reevaluates``), so ``report`` counts each run once. Files are
written atomically with ``segssl.utils.atomic`` (temp file in the same folder, then a rename), so
an interrupted run never leaves a half-written file and files get the user's normal
permissions; existing files are not overwritten unless asked: results of an earlier run are
evidence.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segssl.evaluation.metrics import EMPTY_MASK_POLICY, METRIC_NAMES
from segssl.utils.atomic import write_text

RESULTS_FILENAME = "results.json"
RESULTS_KEYS = ("split", "checkpoint", "protocol", "models", "config", "created")
AGGREGATE_KEYS = ("mean", "per_class", "num_cases")
PER_CASE_COLUMNS = (
    "model",
    "case",
    "class",
    "dice",
    "jaccard",
    "hd95",
    "asd",
    "pred_empty",
    "label_empty",
)


def write_results(
    path: str | os.PathLike,
    *,
    split: str,
    checkpoint: str | os.PathLike | None,
    protocol: Mapping[str, Any],
    models: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    evaluations: Mapping[str, Mapping[str, Any]] | None = None,
    selection_model: str | None = None,
    run_id: str | None = None,
    reevaluates: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``results.json`` atomically and return its path.

    The top-level ``checkpoint`` / ``models`` are the selected checkpoint's (best on validation,
    or the last one when no validation ran); ``evaluations`` holds every checkpoint tested, each
    under its label (``best``, ``last``) with its own ``checkpoint``, ``selection`` and
    ``models``, so a reader never mixes them. ``selection_model`` names the model of ``models``
    the method selects on (``SegmentationMethod.selection_model``), so readers need no table of
    methods. ``run_id`` names the training run the file belongs to; ``reevaluates`` (``run_id``,
    ``run_dir``) the run whose checkpoint a ``segssl test`` evaluated again.

    ``path`` is the file, or an existing folder to write ``results.json`` into. ``protocol``
    gets ``empty_mask_policy`` filled in when absent, since every number depends on it.
    Raises ``FileExistsError`` if the file exists and ``overwrite`` is false.
    """
    target = _results_path(path)
    _refuse_overwrite(target, overwrite)
    _check_models(models)
    if selection_model is not None and selection_model not in models:
        raise ValueError(
            f"selection_model={selection_model!r}: expected one of the models {list(models)}"
        )
    payload: dict[str, Any] = {
        "split": str(split),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "protocol": {"empty_mask_policy": EMPTY_MASK_POLICY, **protocol},
        "models": {str(name): dict(summary) for name, summary in models.items()},
        "config": dict(config),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if selection_model is not None:
        payload["selection_model"] = str(selection_model)
    if run_id is not None:
        payload["run_id"] = str(run_id)
    if reevaluates is not None:
        payload["reevaluates"] = dict(reevaluates)
    if extra is not None:
        payload["extra"] = dict(extra)
    if evaluations is not None:
        for evaluation in evaluations.values():
            _check_models(evaluation["models"])
        payload["evaluations"] = {str(k): dict(v) for k, v in evaluations.items()}
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    _atomic_write_text(target, text)
    return target


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``results.json`` (file or its folder), checking the required keys are there."""
    target = _results_path(path)
    try:
        results = json.loads(target.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{target}: not a readable results file (invalid JSON: {err})") from err
    if not isinstance(results, dict):
        raise ValueError(f"{target}: not a segssl results file (a JSON {type(results).__name__})")
    missing = [k for k in RESULTS_KEYS if k not in results]
    if missing:
        raise ValueError(f"{target}: not a segssl results file, missing keys {missing}")
    problem = results_problem(results)
    if problem:
        raise ValueError(f"{target}: not a readable results file ({problem})")
    return results


# key -> (the JSON types it may hold, what that is in words); optional keys may be absent
_SHAPES: dict[str, tuple[tuple[type, ...], str]] = {
    "split": ((str,), "a string"),
    "checkpoint": ((str, type(None)), "a path string or null"),
    "protocol": ((dict,), "a JSON object"),
    "models": ((dict,), "a JSON object of model name -> metrics"),
    "config": ((dict,), "a JSON object (the resolved config)"),
    "created": ((str,), "a date string"),
    "evaluations": ((dict,), "a JSON object of checkpoint label -> evaluation"),
    "selection_model": ((str,), "a model name"),
    "extra": ((dict,), "a JSON object"),
    "run_id": ((str,), "a string"),
    "reevaluates": ((dict,), "a JSON object"),
}


def results_problem(results: Mapping[str, Any]) -> str | None:
    """What makes a results dict unusable, naming the key (``config`` that is not an object, a
    model entry without ``mean``...), or None. Metric values themselves are checked by their
    readers (``report`` names a string or NaN value and leaves that result out)."""
    for key, (types, words) in _SHAPES.items():
        if key in results and not isinstance(results[key], types):
            return f"`{key}`: expected {words}, got {_shown(results[key])}"
    config = results["config"]
    if {"test", "run"} <= set(config):  # a `segssl test` file: its own and the run's config
        for key in ("test", "run"):
            if not isinstance(config[key], dict):
                return f"`config.{key}`: expected a JSON object, got {_shown(config[key])}"
    places = [("models", results["models"])]
    for label, evaluation in (results.get("evaluations") or {}).items():
        if not isinstance(evaluation, dict) or not isinstance(evaluation.get("models"), dict):
            return f"`evaluations.{label}`: expected a JSON object with `models`"
        places.append((f"evaluations.{label}.models", evaluation["models"]))
    for where, models in places:
        if not models:
            return f"`{where}`: no model"
        for name, summary in models.items():
            if not isinstance(summary, dict):
                return f"`{where}.{name}`: expected a JSON object, got {_shown(summary)}"
            for key in ("mean", "per_class"):
                if not isinstance(summary.get(key), dict):
                    return f"`{where}.{name}.{key}`: expected a JSON object, got " + (
                        "nothing" if key not in summary else _shown(summary[key])
                    )
    return None


def _shown(value: Any) -> str:
    """A short account of a wrong value: itself and its JSON type."""
    text = json.dumps(value, default=str)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value))  # fmt: skip
    return f"{text} ({kind or type(value).__name__})"


def case_rows(model: str, case: str, metrics: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """Per-case CSV rows (one per class) from one ``case_metrics`` result."""
    return [
        {
            "model": model,
            "case": case,
            "class": name,
            **{k: values[k] for k in PER_CASE_COLUMNS[3:]},
        }
        for name, values in metrics.items()
    ]


def write_per_case_csv(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], *, overwrite: bool = False
) -> Path:
    """Write per-case, per-class metrics (``PER_CASE_COLUMNS``) atomically; return the path."""
    target = Path(path)
    _refuse_overwrite(target, overwrite)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PER_CASE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for i, row in enumerate(rows):
        keys = set(row)
        if keys != set(PER_CASE_COLUMNS):
            raise ValueError(
                f"rows[{i}]: expected exactly the columns {list(PER_CASE_COLUMNS)}, "
                f"missing {sorted(set(PER_CASE_COLUMNS) - keys)}, "
                f"unexpected {sorted(keys - set(PER_CASE_COLUMNS))}"
            )
        writer.writerow({k: _csv_value(row[k]) for k in PER_CASE_COLUMNS})
    _atomic_write_text(target, buffer.getvalue())
    return target


def format_results_table(results: Mapping[str, Any]) -> str:
    """Fixed-width text table of a results dict: one row per model, mean metrics, per-class Dice."""
    missing = [k for k in ("split", "checkpoint", "protocol", "models") if k not in results]
    if missing:
        raise ValueError(f"results: expected a write_results/read_results dict, missing {missing}")
    models = results["models"]
    classes = _class_order(models)
    units = _units(results["protocol"])
    header = ["model", "cases", "Dice", "Jaccard", f"HD95 ({units})", f"ASD ({units})"]
    header += [f"Dice {name}" for name in classes]
    body = [_table_row(name, summary, classes) for name, summary in models.items()]
    title = (
        f"split: {results['split']} | checkpoint: {results['checkpoint']} | distances in {units}"
    )
    return "\n".join([title, *_align([header, *body])])


def _units(protocol: Mapping[str, Any]) -> str:
    """Distance units named by the protocol (``units`` or ``distance_units``)."""
    return str(protocol.get("units", protocol.get("distance_units", "unknown units")))


def _table_row(name: str, summary: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """One table row: model, case count, mean metrics, then per-class Dice ('-' if absent)."""
    mean = summary["mean"]
    row = [name, str(summary["num_cases"])]
    row += [_fmt(m, mean[m]) for m in METRIC_NAMES]
    per_class = summary["per_class"]
    row += [_fmt("dice", per_class[c]["dice"]) if c in per_class else "-" for c in classes]
    return row


def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-align the first column, right-align the others, two spaces between columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _fmt(metric: str, value: float) -> str:
    """Overlap scores with 4 decimals, distances with 2."""
    return f"{value:.4f}" if metric in ("dice", "jaccard") else f"{value:.2f}"


def _class_order(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Class names across all models, in first-seen order."""
    names: dict[str, None] = {}
    for summary in models.values():
        names.update(dict.fromkeys(summary["per_class"]))
    return list(names)


def _check_models(models: Mapping[str, Mapping[str, Any]]) -> None:
    """Each model entry must be an ``aggregate`` result."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models: expected a non-empty dict of model name -> aggregate() result")
    for name, summary in models.items():
        if not isinstance(summary, Mapping) or any(k not in summary for k in AGGREGATE_KEYS):
            raise ValueError(
                f"models[{name!r}]: expected an aggregate() dict with keys {list(AGGREGATE_KEYS)}"
            )


def _results_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/results.json`` when it is a folder."""
    target = Path(path)
    return target / RESULTS_FILENAME if target.is_dir() else target


def _refuse_overwrite(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")


def _atomic_write_text(target: Path, text: str) -> None:
    """Through the shared atomic writer: readers never see a part, the file gets the user's
    normal permissions (umask), and a full disk is said in words."""
    write_text(target, text)


def _json_default(value: Any) -> Any:
    """JSON form of numpy values, paths and config containers (e.g. OmegaConf)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"cannot store a {type(value).__name__} in results.json: {value!r}")


def _csv_value(value: Any) -> Any:
    """Plain Python values for the CSV (numpy scalars print as their value)."""
    return value.item() if isinstance(value, np.generic) else value
