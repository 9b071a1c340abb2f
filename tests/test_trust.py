"""A checkpoint is data, never code: ``test`` and ``predict`` read checkpoints weights-only and
build a stored config only from allow-listed targets, refusing anything else before anything
is built, with an error naming the file (and the key)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.utils import instantiate
from PIL import Image

from segssl.commands import test as test_command
from segssl.commands.hydra_app import config_dir
from segssl.commands.predict import predict_files
from segssl.utils.run import resolved_config
from segssl.utils.trust import (
    UntrustedInputError,
    check_targets,
    disallowed_targets,
    is_allowed_target,
)
from tests.conftest import TINY, compose_config

SMALL = [*TINY, "method=supervised", "model.features=[4,4,8,8,16,4]"]


def write_checkpoint(cfg: Any, path: Path) -> Path:
    """A segssl checkpoint as Lightning writes it (weights, hyper-parameters, the stored run
    config), of an untrained method built from ``cfg``: what `test` and `predict` read."""
    method = instantiate(cfg.method)
    method.run_config = resolved_config(cfg)
    state = {
        "state_dict": method.state_dict(),
        "hyper_parameters": dict(method.hparams),
        "pytorch-lightning_version": pl.__version__,
        "global_step": 0,
    }
    method.on_save_checkpoint(state)
    torch.save(state, path)
    return path


@pytest.fixture
def checkpoint(tmp_path: Path, tiny_data_dir: Path) -> Path:
    cfg = compose_config("train", SMALL, tmp_path / "train", tiny_data_dir)
    instantiate(cfg.data, views=None).prepare_data()  # the tiny data, as training leaves it
    return write_checkpoint(cfg, tmp_path / "model.ckpt")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    Image.fromarray(np.arange(24 * 20, dtype=np.uint8).reshape(24, 20)).save(path)
    return path


class TouchOnUnpickle:
    """Unpickling this object runs ``Path.touch(marker)``: code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def run_test(checkpoint: Path, out: Path, *extra: str) -> dict:
    return test_command.test(compose_config("test", [f"ckpt_path={checkpoint}", *extra], out))


# -- the allow-list --------------------------------------------------------------------------
def conf_targets() -> list[str]:
    """Every ``_target_`` in conf/**.yaml: a new config file is covered with no list to edit."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_":
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(Path(config_dir()).rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            walk(document)
    return sorted(set(found))


def test_every_target_of_segssls_own_configs_is_allowed():
    targets = conf_targets()
    assert len(targets) >= 15  # methods, networks, data, views, callbacks, loggers, optimiser
    assert {"segssl.methods.CrossPseudoSupervision", "torch.optim.SGD"} <= set(targets)
    assert [t for t in targets if not is_allowed_target(t)] == []


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "subprocess.run",
        "segssl..x",
        ".segssl.methods.Supervised",
        "segssl.methods.Supervised ",
        "segssl.cli.main",  # segssl, but a command, not a building block
        "segssl.data.datamodule.os.system",  # an allowed module's import of os
        "segssl.methods.base.instantiate",  # a function imported into an allowed module
        "segssl.methods.NoSuchMethod",
        "torch.load",
        "",
        42,
    ],
)
def test_refused_targets(target):
    assert not is_allowed_target(target)
    with pytest.raises(UntrustedInputError, match=r"run\.yaml: refusing to build 'a\.b\[1\]"):
        check_targets({"a": {"b": [{}, {"_target_": target}]}}, "run.yaml")


def test_check_targets_names_every_bad_key_and_ignores_hydras_own_settings():
    config = {
        "hydra": {"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.X"}},
        "data": {"_target_": "segssl.data.datamodule.SemiSupervisedDataModule"},
        "method": {"model": {"_target_": "os.system"}, "optimizer": {"_target_": "eval"}},
    }
    assert disallowed_targets(config) == [
        ("hydra.launcher._target_", "hydra._internal.core_plugins.basic_launcher.X"),
        ("method.model._target_", "os.system"),
        ("method.optimizer._target_", "eval"),
    ]
    with pytest.raises(UntrustedInputError, match=r"'method\.model\._target_: os\.system' \(and 1"):
        check_targets(config, "x.ckpt")
    check_targets({k: v for k, v in config.items() if k != "method"}, "x.ckpt")  # no error


# -- crafted checkpoints against `test` and `predict` -----------------------------------------
def test_a_pickle_that_would_run_code_is_refused_by_test_and_predict(checkpoint, image, tmp_path):
    marker = tmp_path / "pwned"
    state = torch.load(checkpoint, weights_only=True)
    state["segssl_config"]["notes"] = TouchOnUnpickle(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)

    refused = rf"{re.escape(str(evil))}: refused: it holds pickled Python objects"
    with pytest.raises(UntrustedInputError, match=refused):
        run_test(evil, tmp_path / "test_run")
    with pytest.raises(UntrustedInputError, match=refused):
        predict_files(evil, image, tmp_path / "masks")
    assert not marker.exists()
    assert not (tmp_path / "test_run" / "results.json").exists()
    assert not (tmp_path / "masks").exists()
    # the file is a working exploit: a full unpickle would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


# os.system is the classic; Hydra 1.3.8's own blocklist happens to stop it, but not
# builtins.open, which creates the marker file when built (as the old `test` would have)
CALLABLES = {
    "os.system": lambda marker: {"command": f"touch {marker}"},
    "builtins.open": lambda marker: {"file": str(marker), "mode": "w"},
}


@pytest.mark.parametrize("target", list(CALLABLES))
@pytest.mark.parametrize(
    ("where", "key"),
    [
        (("segssl_config", "data", "synthetic"), "segssl_config.data.synthetic._target_"),
        (("segssl_config", "method", "model"), "segssl_config.method.model._target_"),
        (("hyper_parameters", "model"), "hyper_parameters.model._target_"),
    ],
)
def test_a_stored_config_naming_a_callable_off_the_list_is_refused_before_anything_is_built(
    checkpoint, image, tmp_path, where, key, target
):
    marker = tmp_path / "pwned"
    state = torch.load(checkpoint, weights_only=True)
    node = state
    for name in where[:-1]:
        node = node[name]
    # building this node creates the marker (the old `test` built data.synthetic and the
    # networks of hyper_parameters.model from the checkpoint as they were)
    node[where[-1]] = {"_target_": target, **CALLABLES[target](marker)}
    crafted = tmp_path / "crafted.ckpt"
    torch.save(state, crafted)

    refused = rf"{re.escape(str(crafted))}: refusing to build '{re.escape(f'{key}: {target}')}'"
    with pytest.raises(UntrustedInputError, match=refused):
        run_test(crafted, tmp_path / "test_run")
    with pytest.raises(UntrustedInputError, match=refused):
        predict_files(crafted, image, tmp_path / "masks")
    assert not marker.exists()
    assert not (tmp_path / "masks").exists()


def test_the_same_checkpoint_uncrafted_is_tested_and_predicted(checkpoint, image, tmp_path):
    """The control: what the tests above refuse is the crafted part, not the checkpoint."""
    summary = run_test(checkpoint, tmp_path / "test_run")
    results = json.loads((tmp_path / "test_run" / "results.json").read_text())
    assert results["split"] == "test" and results["checkpoint"] == str(checkpoint.resolve())
    assert results["protocol"]["inference"] == summary["protocol"]["inference"] == "slice-wise"
    assert set(results["models"]) == {"net"} and results["models"]["net"]["num_cases"] > 0
    assert results["config"]["run"]["method_name"] == "supervised"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "per_case.csv"):  # not mkstemp's 0600
        mode = stat.S_IMODE((tmp_path / "test_run" / name).stat().st_mode)
        assert mode == 0o666 & ~umask, name
    manifest = predict_files(checkpoint, image, tmp_path / "masks")
    assert manifest["status"] == "complete" and manifest["failed"] == []
    assert np.asarray(Image.open(tmp_path / "masks" / "input_pred.png")).shape == (24, 20)


def test_weights_of_another_model_are_a_clear_error(checkpoint, image, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"] = {k: v[..., :1] for k, v in state["state_dict"].items()}
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    fits = rf"{other}: its weights do not fit the model of its stored config"
    with pytest.raises(ValueError, match=fits):
        run_test(other, tmp_path / "test_run")
    with pytest.raises(ValueError, match=fits):  # predict reads checkpoints as `test` does
        predict_files(other, image, tmp_path / "masks")


def test_a_method_target_that_is_not_a_segssl_method_is_refused(checkpoint, image, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    state["segssl_config"]["method"]["_target_"] = "torch.nn.Linear"  # allowed, not a method
    odd = tmp_path / "odd.ckpt"
    torch.save(state, odd)
    with pytest.raises(UntrustedInputError, match=rf"{odd}: .*'torch\.nn\.Linear' is not a"):
        predict_files(odd, image, tmp_path / "masks")


def test_a_moved_module_in_an_old_config_is_upgraded_not_refused():
    """Configs stored before the view makers moved to segssl.filters name the old module."""
    from segssl.utils.trust import check_targets, upgrade_targets

    old = {"filter": {"_target_": "segssl.data.views.TwoViews", "p": 0.0}, "x": [{"a": 1}]}
    check_targets(old, "old.ckpt")  # allowed once renamed
    assert upgrade_targets(old)["filter"]["_target_"] == "segssl.filters.views.TwoViews"
    assert old["filter"]["_target_"] == "segssl.data.views.TwoViews"  # the input is untouched
    with pytest.raises(UntrustedInputError, match="segssl.data.views_evil"):
        check_targets({"_target_": "segssl.data.views_evil.x"}, "bad.ckpt")
