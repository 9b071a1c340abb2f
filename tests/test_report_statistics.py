"""Paired statistics on constructed per-volume data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from segssl.commands.report.statistics import ComparisonError, paired_comparison


def volumes(values) -> dict[str, float]:
    return {f"case{i:03d}": float(v) for i, v in enumerate(values)}


@pytest.fixture
def baseline() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.6, 0.9, size=30)


def test_identical_groups_are_not_significant(baseline):
    result = paired_comparison(volumes(baseline), volumes(baseline), "dice")
    assert result.mean_difference == 0.0
    assert result.ci_low <= 0.0 <= result.ci_high
    assert not result.significant
    assert result.p_value == 1.0
    assert result.wins == result.losses == 0


def test_noise_around_the_baseline_is_not_significant(baseline):
    noise = np.random.default_rng(1).normal(0, 0.02, size=baseline.size)
    noise -= noise.mean()  # zero mean difference by construction
    result = paired_comparison(volumes(baseline + noise), volumes(baseline), "dice")
    assert result.ci_low < 0 < result.ci_high
    assert not result.significant
    assert result.p_value > 0.05


def test_a_shifted_group_is_significant_with_its_shift_in_the_interval(baseline):
    noise = np.random.default_rng(2).normal(0, 0.01, size=baseline.size)
    result = paired_comparison(volumes(baseline + 0.03 + noise), volumes(baseline), "dice")
    assert result.significant
    assert result.ci_low > 0 and result.ci_low <= 0.03 + noise.mean() <= result.ci_high
    assert result.mean_difference == pytest.approx(0.03 + noise.mean())
    assert result.p_value < 0.001
    assert result.wins == int(np.sum(0.03 + noise > 0))


def test_a_constant_shift_has_a_point_interval(baseline):
    result = paired_comparison(volumes(baseline - 0.1), volumes(baseline), "dice")
    assert result.ci_low == pytest.approx(-0.1) and result.ci_high == pytest.approx(-0.1)
    assert result.significant and result.losses == baseline.size


def test_lower_distances_win(baseline):
    distances = baseline * 20
    result = paired_comparison(volumes(distances - 2), volumes(distances), "hd95")
    assert result.mean_difference == pytest.approx(-2)
    assert result.wins == distances.size and result.losses == 0


def test_different_volumes_are_refused_naming_them(baseline):
    group = volumes(baseline)
    other = dict(group)
    other.pop("case003")
    other["case999"] = 0.5
    with pytest.raises(
        ComparisonError, match=r"only dsaif has case003.*only supervised has case999"
    ):
        paired_comparison(group, other, "dice", names=("dsaif", "supervised"))
