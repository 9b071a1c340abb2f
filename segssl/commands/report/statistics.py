"""Paired comparison of two groups of runs on the same test volumes.

Why paired: seed spread alone moves a mean Dice by about a point, and the volumes differ far more
than the methods do. Comparing each volume with itself (the group's value minus the baseline's)
removes the volume effect, so a one-point difference can be told from noise. The interval is a
bootstrap over volumes and the test a Wilcoxon signed-rank test, both from scipy.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

# metrics where a lower value is better (distances); every other metric is better higher
LOWER_IS_BETTER = frozenset({"hd95", "asd"})


class ComparisonError(ValueError):
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
