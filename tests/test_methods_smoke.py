"""Every method of conf/method/ (found by globbing, so a new method file is tested with no list to
edit) with the plain and the DSAIF views: the command line's ``filter=`` wins over the method
file's default, and each pair trains on the tiny synthetic data with finite losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback

from segssl.runs.hydra_app import config_dir
from tests.conftest import TINY, compose_config
from tests.helpers.configs import group_options
from tests.helpers.training import training_only_trainer

METHODS = group_options("method")
FILTERS = ["none", "dsaif"]


def filter_target(name: str) -> str:
    return OmegaConf.load(config_dir() / "filter" / f"{name}.yaml")["_target_"]


def test_the_glob_finds_the_methods():
    assert {"supervised", "cps", "dsaif", "mean_teacher", "bcp", "abd", "unimatch"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_command_line_filter_wins_over_the_method_default(method, tmp_path, tiny_data_dir):
    """Hydra applies command-line group overrides after the defaults lists' ``override``
    entries, so ``-m method=...,... filter=none,dsaif`` is an ordinary sweep."""
    for name in FILTERS:
        cfg = compose_config(
            "train", [*TINY, f"method={method}", f"filter={name}"], tmp_path / name, tiny_data_dir
        )
        assert cfg.filter._target_ == filter_target(name)
        assert cfg.hydra.runtime.choices.filter == name
    cfg = compose_config("train", [*TINY, f"method={method}"], tmp_path / "default", tiny_data_dir)
    assert cfg.hydra.runtime.choices.filter in ("none", "dsaif")


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def train_steps(method: str, view: str, steps: int, tmp_path: Path, data_dir: Path) -> pl.Trainer:
    from segssl.commands.train import build_data_and_method

    overrides = [*TINY, f"method={method}", f"filter={view}", f"trainer.max_steps={steps}"]
    cfg = compose_config("train", overrides, tmp_path / "run", data_dir)
    pl.seed_everything(0)
    datamodule, module = build_data_and_method(cfg)
    before = {k: v.clone() for k, v in module.state_dict().items() if k.startswith("networks.")}
    losses = Losses()
    trainer = training_only_trainer(steps, callbacks=[losses], log_every_n_steps=1)
    trainer.fit(module, datamodule=datamodule)
    assert len(losses.values) == steps and all(math.isfinite(v) for v in losses.values)
    for name in module.trainable():
        changed = [
            not torch.equal(before[k], v)
            for k, v in module.state_dict().items()
            if k.startswith(f"networks.{name}.") and v.is_floating_point()
        ]
        assert any(changed), f"{method}/{view}: {name} did not train"
    return trainer


@pytest.mark.parametrize("view", FILTERS)
@pytest.mark.parametrize("method", METHODS)
def test_each_method_and_view_takes_training_steps(method, view, tmp_path, tiny_data_dir):
    trainer = train_steps(method, view, 2, tmp_path, tiny_data_dir)
    # every method shows how its networks fit the labels (here BCP is already in stage 2)
    dice = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/dice_")}
    assert dice and all(0.0 <= v <= 1.0 for v in dice.values()), trainer.callback_metrics


@pytest.mark.slow
@pytest.mark.parametrize("view", FILTERS)
@pytest.mark.parametrize("method", METHODS)
def test_each_method_and_view_smoke_30_steps(method, view, tmp_path, tiny_data_dir):
    """The issue's 30-step smoke run (BCP crosses its stage switch at step 8)."""
    train_steps(method, view, 30, tmp_path, tiny_data_dir)
