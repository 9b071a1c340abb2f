"""``hparams_search=dsaif_optuna``: the sweep config composes into an Optuna search over real
config keys, and a 2-trial search on the tiny data optimises the runs' best validation Dice."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_config

PARAMS = {
    "filter.p": "UniformDistribution",
    "filter.area_threshold": "IntUniformDistribution",
    "method.rampup_steps": "IntLogUniformDistribution",
    "method.optimizer.lr": "LogUniformDistribution",
}


def test_sweep_config_composes_to_an_optuna_search_of_existing_keys(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = compose_config("train", ["hparams_search=dsaif_optuna"], tmp_path / "run")
    assert cfg.optimized_metric == "val/dice"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == set(PARAMS)
    parser = OverridesParser.create()
    for key, value in sweeper.params.items():
        assert OmegaConf.select(cfg, key) is not None, f"{key} is not a key of the train config"
        override = parser.parse_override(f"{key}={value}")
        assert type(create_optuna_distribution_from_override(override)).__name__ == PARAMS[key]


@pytest.mark.slow
def test_two_trial_optuna_search_returns_the_best_validation_dice(tmp_path, tiny_data_dir):
    small = ["model.features=[4,4,8,8,16,4]", "trainer.max_steps=2", "logger=none", "test=false"]
    run = subprocess.run(
        [sys.executable, "-m", "segssl", "train", "-m", "hparams_search=dsaif_optuna",
         "hydra.sweeper.n_trials=2", *TINY, *small],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SEGSSL_DATA_DIR": str(tiny_data_dir), "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multirun").iterdir()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == set(PARAMS)
    # each trial returned its best val/dice: the score in its best checkpoint's name
    scores = []
    for trial in ("0", "1"):
        (best,) = (sweep / trial / "checkpoints").glob("best_step*.ckpt")
        scores.append(float(re.search(r"dice([0-9.]+)\.ckpt$", best.name)[1]))
        overrides = (sweep / trial / ".hydra" / "overrides.yaml").read_text()
        assert all(key in overrides for key in PARAMS)
    assert results["best_value"] == pytest.approx(max(scores), abs=1e-4)
