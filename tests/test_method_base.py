"""The method base: every constructor argument saved once as plain data (checkpoints load
weights-only and rebuild the method), and the selection model a checked class attribute that
reaches results.json. Methods are found by globbing conf/method/, so a new one needs no edit."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segssl.evaluation.results import write_results
from segssl.methods import Supervised
from segssl.methods.from_checkpoint import build_method, read_checkpoint
from segssl.runs.hydra_app import config_dir
from segssl.runs.results import resolved_config
from segssl.utils.trust import load_checkpoint
from tests.conftest import TINY, compose_config, save_as_lightning
from tests.helpers.configs import group_options

METHODS = group_options("method")
SMALL_UNET = "model.features=[4,4,8,8,16,4]"


def compose_method(name: str, tmp_path: Path, *extra: str):
    cfg = compose_config("train", [*TINY, SMALL_UNET, f"method={name}", *extra], tmp_path / name)
    return cfg, instantiate(cfg.method)


def plain_settings(tmp_path: Path) -> dict:
    """The supervised method's constructor arguments as a plain dict."""
    cfg = compose_config("train", [*TINY, SMALL_UNET, "method=supervised"], tmp_path / "s")
    settings = OmegaConf.to_container(cfg.method, resolve=True)
    return {k: v for k, v in settings.items() if k not in ("_target_", "_recursive_")}


def constructor_arguments(cls: type) -> set[str]:
    """Named parameters of every ``__init__`` from ``cls`` up to the base."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is pl.LightningModule:
            break
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                    names.add(p.name)
    return names


def test_the_glob_finds_the_methods_and_skips_the_base():
    assert {"supervised", "cps", "dsaif", "mean_teacher", "bcp", "abd", "unimatch"} <= set(METHODS)
    assert "_base" not in METHODS and (config_dir() / "method" / "_base.yaml").is_file()


@pytest.mark.parametrize("name", METHODS)
def test_settings_are_saved_once_and_rebuild_the_method_from_a_weights_only_load(name, tmp_path):
    """The YAML's settings are exactly what the constructors take and what ``hparams`` holds
    (as plain data); the checkpoint loads as data and rebuilds an equal method."""
    cfg, method = compose_method(name, tmp_path)
    stored = dict(method.hparams)
    assert set(stored) == constructor_arguments(type(method))
    yaml_settings = OmegaConf.to_container(cfg.method, resolve=True)
    for key in ("_target_", "_recursive_"):
        yaml_settings.pop(key)
    assert set(yaml_settings) <= set(stored)
    for key, value in yaml_settings.items():
        # a YAML list may arrive as a tuple where the constructor keeps one
        assert stored[key] == value or list(stored[key]) == value, key
    assert all(type(stored[k]) in (dict, list) for k in ("model", "optimizer", "evaluation"))

    path = save_as_lightning(method, cfg, tmp_path / f"{name}.ckpt")
    contents = load_checkpoint(path)  # torch.load(weights_only=True)
    assert contents["hyper_parameters"] == stored
    rebuilt = build_method(read_checkpoint(path))
    assert type(rebuilt) is type(method) and dict(rebuilt.hparams) == stored
    for key, value in method.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_a_checkpoint_from_before_save_hyperparameters_still_loads(tmp_path):
    """Before, the base stored its own arguments plus each method's ``method_hparams()``: the
    same names, so an old checkpoint's ``hyper_parameters`` still build the method."""
    cfg, method = compose_method("unimatch", tmp_path)
    old = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "num_classes": 4,
        "class_names": ["RV", "Myo", "LV"],
        "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9},
        "evaluation": OmegaConf.to_container(cfg.evaluation, resolve=True),
        "poly_power": 0.9,
        "model_2": None,
        "conf_thresh": 0.9,
        "weights": [0.25, 0.25, 0.5],
        "fp_dropout": 0.5,
        "jitter": 0.5,
        "jitter_p": 0.8,
        "blur_p": 0.5,
        "blur_sigma": [0.1, 2.0],
        "cutmix_p": 0.5,
    }
    method.run_config = resolved_config(cfg)
    state = {"state_dict": method.state_dict(), "hyper_parameters": old}
    method.on_save_checkpoint(state)
    torch.save(state, tmp_path / "old.ckpt")
    rebuilt = build_method(read_checkpoint(tmp_path / "old.ckpt"))
    assert rebuilt.conf_thresh == 0.9 and rebuilt.hparams.blur_sigma == [0.1, 2.0]


def test_settings_that_are_not_plain_data_are_refused_with_their_key(tmp_path):
    settings = plain_settings(tmp_path)
    settings["optimizer"]["lr"] = np.float64(0.01)
    with pytest.raises(TypeError, match=r"method\.optimizer\.lr=.*plain data.*float64"):
        Supervised(**settings)


def test_selection_model_must_be_a_model_the_method_evaluates(tmp_path):
    class Misnamed(Supervised):
        selection_model = "ensemble"

    with pytest.raises(ValueError, match=r"Misnamed.selection_model='ensemble'.*\['net'\]"):
        Misnamed(**plain_settings(tmp_path))


def test_selection_model_is_stored_in_results_json_and_checked(tmp_path):
    aggregate = {"mean": {"dice": 0.5}, "per_class": {}, "num_cases": 1}
    common = {"split": "val", "checkpoint": None, "protocol": {}, "config": {}}
    models = {"net1": aggregate, "ensemble": aggregate}
    path = write_results(tmp_path, models=models, selection_model="ensemble", **common)
    assert json.loads(path.read_text())["selection_model"] == "ensemble"
    with pytest.raises(ValueError, match=r"selection_model='student'.*\['net1', 'ensemble'\]"):
        write_results(tmp_path / "b.json", models=models, selection_model="student", **common)
    assert not (tmp_path / "b.json").exists()
