"""``scripts/bench_3d_views.py`` (issue 27, item 5): crops per second per core of the 3-D DSAIF
input for ``+experiment=la`` and ``+experiment=pancreas``, on the fly and cached, and whether the
cache gives the authors' views (filter the crop, not the volume)."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from segssl.filters import dual_tree_filter
from tests.conftest import REPO, compose_config, segssl_env

SCRIPT = REPO / "scripts" / "bench_3d_views.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_3d_views", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_rates_workers_build_cost_and_recipe_check():
    """The smoke run composes both experiments, times both paths and prints parsable lines."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        env=segssl_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    rates = {
        (exp, path): (float(rate), int(workers))
        for exp, path, rate, workers in re.findall(
            r"^crops_per_s (\w+) (on_the_fly|cached) ([\d.]+) workers_for_40 (\d+)$", out, re.M
        )
    }
    assert set(rates) == {(e, p) for e in ("la", "pancreas") for p in ("on_the_fly", "cached")}
    for rate, workers in rates.values():
        assert rate > 0
        assert workers == math.ceil(40 / rate)
    builds = dict(re.findall(r"^cache_build_s_per_volume (\w+) ([\d.]+)$", out, re.M))
    assert set(builds) == {"la", "pancreas"}
    checks = re.findall(
        r"^cache_vs_recipe (\w+) differing_voxels ([\d.]+) mean_abs_diff ([\d.]+)$", out, re.M
    )
    assert {c[0] for c in checks} == {"la", "pancreas"}
    assert all(0.0 <= float(c[1]) <= 1.0 for c in checks)
    # the patch 16x16x12 of a 28-voxel volume cuts components: the cache is not the recipe
    assert any(float(c[1]) > 0 for c in checks)
    assert "rotate_view_2 True" in out


def test_cache_vs_recipe_is_zero_when_the_crop_is_the_volume_and_not_otherwise():
    """The check itself: a crop covering the whole volume is the recipe exactly; a smaller crop
    of a structured volume differs (quantisation range and components cut by the border)."""
    bench = load_script()
    rng = np.random.default_rng(0)
    volume, _ = bench.smooth_volume(rng, (24, 24, 16))
    assert bench.cache_vs_recipe(volume, (24, 24, 16), 5, crops=1) == (0.0, 0.0)
    fraction, mad = bench.cache_vs_recipe(volume, (12, 12, 8), 5, crops=2)
    assert fraction > 0 and mad > 0
    # and what it compares is the filter of the crop against the crop of the filter
    box = (slice(0, 12), slice(0, 12), slice(0, 8))
    assert not np.array_equal(
        dual_tree_filter(volume, 5)[0][box], dual_tree_filter(volume[box], 5)[0]
    )


def test_workers_needed_rounds_up_to_feed_40_crops_per_second():
    bench = load_script()
    assert bench.workers_needed(40.0) == 1
    assert bench.workers_needed(39.9) == 2
    assert bench.workers_needed(4.1) == 10


@pytest.mark.parametrize("experiment", ["la", "pancreas"])
def test_recipe_experiments_filter_the_crop_not_the_cached_volume(experiment, tmp_path):
    """la and pancreas claim DSAIF-SEMI's views (the crop filtered), which the cache does not
    give (the test above): they keep filter.cache=false, and rotate network 2's view."""
    cfg = compose_config("train", [f"+experiment={experiment}"], tmp_path / "run")
    assert cfg.filter.cache is False
    assert cfg.filter.rotate_view_2 is True
    assert cfg.filter.area_threshold == 50
