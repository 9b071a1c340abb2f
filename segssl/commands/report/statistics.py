"""Paired comparison of two groups of runs on the same test volumes.

Why paired: seed spread alone moves a mean Dice by about a point, and the volumes differ far more
than the methods do. Comparing each volume with itself (the group's value minus the baseline's)
removes the volume effect, so a one-point difference can be told from noise. The interval is a
bootstrap over volumes and the test a Wilcoxon signed-rank test, both from scipy.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from segssl.commands.report.runs import CHECKPOINTS, Group, ReportError

# metrics where a lower value is better (distances); every other metric is better higher
LOWER_IS_BETTER = frozenset({"hd95", "asd"})


class ComparisonError(ReportError):
    """Two groups that cannot be compared volume by volume."""


@dataclass(frozen=True)
class PairedComparison:
    """``group - baseline`` on one metric, over the volumes both were scored on."""

    metric: str
    volumes: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int  # volumes where the group is strictly better than the baseline
    losses: int
    confidence: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero (a difference that crosses zero is not significant)."""
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def paired_values(
    group: Mapping[str, float], baseline: Mapping[str, float], names: tuple[str, str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The two groups' values on the same volumes, in one order; different volume sets are an
    error naming the volumes that only one group has."""
    only_group = sorted(set(group) - set(baseline))
    only_baseline = sorted(set(baseline) - set(group))
    if only_group or only_baseline:
        parts = []
        if only_group:
            parts.append(f"only {names[0]} has {_some(only_group)}")
        if only_baseline:
            parts.append(f"only {names[1]} has {_some(only_baseline)}")
        raise ComparisonError(
            f"{names[0]} and {names[1]} were scored on different volumes ({'; '.join(parts)}): "
            "a paired comparison needs the same test volumes"
        )
    volumes = sorted(group)
    if not volumes:
        raise ComparisonError(f"{names[0]} and {names[1]}: no volumes to compare")
    return volumes, np.array([group[v] for v in volumes]), np.array([baseline[v] for v in volumes])


def paired_comparison(
    group: Mapping[str, float],
    baseline: Mapping[str, float],
    metric: str,
    *,
    names: tuple[str, str] = ("group", "baseline"),
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> PairedComparison:
    """Mean of per-volume differences with a bootstrap interval (BCa, percentile when BCa is
    undefined), the Wilcoxon signed-rank p-value, and wins / losses per volume."""
    _, values, reference = paired_values(group, baseline, names)
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(reference))):
        raise ComparisonError(f"{names[0]} vs {names[1]}: {metric} has non-finite values")
    differences = values - reference
    mean = float(differences.mean())
    low, high = _bootstrap_interval(differences, confidence, n_resamples, seed)
    better = -differences if metric in LOWER_IS_BETTER else differences
    return PairedComparison(
        metric=metric,
        volumes=len(differences),
        mean_difference=mean,
        ci_low=low,
        ci_high=high,
        p_value=_wilcoxon_p(differences),
        wins=int(np.sum(better > 0)),
        losses=int(np.sum(better < 0)),
        confidence=confidence,
    )


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None


def seed_mean(runs: Mapping[str, Mapping[str, float]], group: str) -> dict[str, float]:
    """Per-volume values averaged over a group's seeds (``runs``: run name -> {volume:
    value}). Every seed must have been scored on the same volumes, else an error naming the
    runs that differ."""
    names = list(runs)
    if not names:
        raise ComparisonError(f"{group}: no runs to average")
    volumes = set(runs[names[0]])
    for name in names[1:]:
        if set(runs[name]) != volumes:
            differ = sorted(set(runs[name]) ^ volumes)
            raise ComparisonError(
                f"{group}: runs {names[0]} and {name} were scored on different volumes "
                f"({_some(differ)} in only one of them)"
            )
    return {v: float(np.mean([runs[n][v] for n in names])) for v in sorted(volumes)}


# metrics compared volume by volume against the baseline
PAIRED_METRICS = ("dice", "hd95")


def group_selection_model(group: Group) -> str:
    """The one model a group's checkpoints were selected on (what a comparison compares)."""
    found = {r.selection_model for r in group.runs}
    if len(found) != 1 or None in found:
        raise ReportError(
            f"group {group.label!r}: no single selection model in its runs "
            f"({sorted(map(str, found))}); choose with --models NAME[,NAME] or --models all"
        )
    return str(found.pop())


def group_labels(group: Group) -> list[str]:
    """The checkpoint labels any run of the group was tested with, best first."""
    labels = dict.fromkeys(label for r in group.runs for label in r.evaluations())
    return sorted(labels, key=lambda k: (list(CHECKPOINTS).index(k) if k in CHECKPOINTS else 9, k))


def compare_pairs(
    pairs: Sequence[tuple[Group, Group]], *, confidence: float = 0.95, seed: int = 0
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each (group, baseline) compared on the checkpoints both have (best and last apart, never
    mixed), on ``PAIRED_METRICS``, with per-volume values averaged over each group's seeds.
    Returns the rows and notes on the checkpoints that could not be compared."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for group, baseline in pairs:
        models = group_selection_model(group), group_selection_model(baseline)
        theirs = group_labels(baseline)
        for label in group_labels(group):
            if label not in theirs:
                notes.append(
                    f"`{group.label}` vs `{baseline.label}`: the baseline has no {label} "
                    "checkpoint, so this checkpoint is not compared"
                )
                continue
            for metric in PAIRED_METRICS:
                values = [
                    seed_mean(
                        {
                            str(r.path.parent): r.per_volume(label, model, metric)
                            for r in g.runs
                            if label in r.evaluations()
                        },
                        g.label,
                    )
                    for g, model in zip((group, baseline), models, strict=True)
                ]
                result = paired_comparison(
                    values[0], values[1], metric, names=(group.label, baseline.label),
                    confidence=confidence, seed=seed,
                )  # fmt: skip
                rows.append(
                    {
                        "group": group.label,
                        "baseline": baseline.label,
                        "checkpoint": label,
                        "model": models[0],
                        "baseline_model": models[1],
                        **result.as_dict(),
                    }
                )
        for label in theirs:
            if label not in group_labels(group):
                notes.append(
                    f"`{group.label}` vs `{baseline.label}`: the group has no {label} "
                    "checkpoint, so this checkpoint is not compared"
                )
    return rows, notes


def _bootstrap_interval(
    differences: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    if np.ptp(differences) == 0:  # every resample has the same mean: the interval is a point
        value = float(differences[0])
        return value, value
    if len(differences) < 2:
        return float("-inf"), float("inf")
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = stats.bootstrap(
                (differences,),
                np.mean,
                confidence_level=confidence,
                n_resamples=n_resamples,
                method=method,
                random_state=np.random.default_rng(seed),
            )
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high)
    return float("-inf"), float("inf")


def _wilcoxon_p(differences: np.ndarray) -> float:
    if not np.any(differences):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(differences).pvalue)


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
