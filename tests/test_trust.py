"""A checkpoint is data, never code: ``test`` and ``predict`` read checkpoints weights-only and
build a stored config only from allow-listed targets, refusing anything else before anything
is built, with an error naming the file (and the key)."""

from __future__ import annotations

import inspect
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
from hydra._internal.utils import _locate
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from segssl.commands import test as test_command
from segssl.commands.predict import predict_files
from segssl.runs.hydra_app import config_dir
from segssl.runs.results import resolved_config
from segssl.utils.trust import (
    ALLOWED_TARGETS,
    TRUSTED_TARGETS_ENV,
    UntrustedInputError,
    check_targets,
    disallowed_targets,
    is_allowed_target,
)
from tests.conftest import TINY, compose_config, start_segssl

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
    """Every ``_target_`` in conf/**.yaml that a stored config can hold: a new config file is
    covered with no list to edit. Hydra's own settings (conf/hydra/, a ``hydra:`` key) are
    built by Hydra from the live config, never from a stored one, and are left out."""
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

    root = Path(config_dir())
    for path in sorted(root.rglob("*.yaml")):
        if path.relative_to(root).parts[0] == "hydra":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict):
                walk({k: v for k, v in document.items() if k != "hydra"})
    return sorted(set(found))


def test_every_target_of_segssls_own_configs_is_allowed():
    targets = conf_targets()
    assert len(targets) >= 15  # methods, networks, data, views, callbacks, loggers, optimiser
    assert {"segssl.methods.CrossPseudoSupervision", "torch.optim.SGD"} <= set(targets)
    assert [t for t in targets if not is_allowed_target(t)] == []


def test_the_allow_list_names_module_level_classes_and_functions_only():
    """Each entry is what it says: importable, a class or function of its module (not an
    attribute of a class, not a module), so the list cannot grant a method by accident."""
    for target in sorted(ALLOWED_TARGETS):
        obj = _locate(target)
        assert inspect.isclass(obj) or inspect.isfunction(obj), target
        assert "." not in obj.__qualname__, f"{target} is an attribute of {obj.__qualname__}"


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "builtins.open",
        "subprocess.run",
        "segssl..x",
        ".segssl.methods.Supervised",
        "segssl.methods.Supervised ",
        "segssl.cli.main",  # segssl, but a command, not a building block
        "segssl.data.datamodule.os.system",  # an allowed module's import of os
        "segssl.methods.base.instantiate",  # a function imported into an allowed module
        "segssl.methods.NoSuchMethod",
        # a method of an allowed class: writes any file with chosen content (issue 22)
        "segssl.utils.checkpoint_io.AtomicCheckpointIO.save_checkpoint",
        "segssl.utils.checkpoint_io.AtomicCheckpointIO",  # a class of an allowed module
        "segssl.utils.atomic.write_text",
        "segssl.methods.Supervised.load_from_checkpoint",
        "segssl.utils.checkpoint_io.RunCheckpoint.save_checkpoint",
        "pytorch_lightning.Trainer.save_checkpoint",
        "torch.optim.SGD.step",
        "segssl.models.unet.encoder_decoder",  # a helper of an allowed module
        "segssl.methods.base.plain",
        "torch.nn.Module",
        "torch.load",
        "",
        42,
        None,
    ],
)
def test_refused_targets(target):
    assert not is_allowed_target(target)
    with pytest.raises(UntrustedInputError, match=r"run\.yaml: refusing to build 'a\.b\[1\]"):
        check_targets({"a": {"b": [{}, {"_target_": target}]}}, "run.yaml")


def test_a_user_can_trust_more_exact_names_in_their_own_environment(monkeypatch):
    name = "monai.networks.nets.UNet"
    assert not is_allowed_target(name)
    monkeypatch.setenv(TRUSTED_TARGETS_ENV, f"{name}, not a name,os.system.")
    assert is_allowed_target(name)
    check_targets({"model": {"_target_": name}}, "run.yaml")
    assert not is_allowed_target("not a name") and not is_allowed_target("os.system.")


# Hydra's special keys: what each does in instantiate, and what a file may put there
SAVE = "segssl.utils.checkpoint_io.AtomicCheckpointIO.save_checkpoint"
ALLOWED_NET = "segssl.models.vnet.VNet"


@pytest.mark.parametrize(
    ("node", "key", "why"),
    [
        # the payload of issue 22: positional arguments to a method reached through a class
        ({"_target_": SAVE, "_args_": [None, {"k": "x"}, "/tmp/f"]}, "m._target_", "build"),
        # an allowed target whose positional arguments hold a node that builds something else
        (
            {"_target_": ALLOWED_NET, "_args_": [{"_target_": SAVE, "_args_": [None, {}, "f"]}]},
            "m._args_[0]._target_",
            "build",
        ),
        ({"_target_": ALLOWED_NET, "_args_": "not a list"}, "m._args_", "must be a list"),
        ({"_args_": [{"a": 1}]}, "m._args_", "without a _target_"),
        ({"_partial_": True}, "m._partial_", "without a _target_"),
        ({"_target_": ALLOWED_NET, "_partial_": "yes"}, "m._partial_", "true or false"),
        ({"_target_": ALLOWED_NET, "_recursive_": 1}, "m._recursive_", "true or false"),
        ({"_target_": ALLOWED_NET, "_convert_": "eval"}, "m._convert_", "_convert_ must be"),
        ({"_target_": ALLOWED_NET, "_call_": SAVE}, "m._call_", "reserved by Hydra"),
        # resolvers that make a node no check has seen (oc.create builds it where referenced)
        ({"a": "${oc.create:{_target_: os.system}}"}, "m.a", "interpolation"),
        ({"a": "${oc.decode:'{_target_: os.system}'}"}, "m.a", "interpolation"),
        ({"a": "${oc.select:x,{_target_: os.system}}"}, "m.a", "interpolation"),
        ({"a": "${oc.select:x,[{_target_: os.system}]}"}, "m.a", "interpolation"),
        ({"a": "${oc.select:x,${oc.create:{}}}"}, "m.a", "interpolation"),
        ({"a": "${oc.select:hydra.launcher}"}, "m.a", "interpolation"),
        ({"a": "${oc.env:HOME,${oc.create:{_target_: os.system}}}"}, "m.a", "interpolation"),
        ({"a": "${hydra.evil}"}, "m.a", "interpolation"),  # hydra: is never checked
        ({"a": "${hydra:launcher}"}, "m.a", "interpolation"),
        ({"a": "${..up}"}, "m.a", "interpolation"),
        ({"a": ["x", "${a${b}}"]}, "m.a[1]", "interpolation"),
    ],
)
def test_hydras_special_keys_and_resolvers_cannot_reach_other_callables(node, key, why):
    with pytest.raises(UntrustedInputError) as refused:
        check_targets({"m": node}, "x.ckpt")
    message = str(refused.value)
    assert re.match(rf"x\.ckpt: refusing (to build )?'{re.escape(key)}", message), message
    assert why in message


def test_hydras_special_keys_holding_data_or_allowed_nodes_are_accepted():
    view = {"_target_": "segssl.filters.views.GaussianBlur", "sigma": 1.0}
    check_targets(
        {
            "a": {"_target_": ALLOWED_NET, "_args_": [1, [2, 3], {"k": "v"}, view]},
            "b": {"_target_": ALLOWED_NET, "_partial_": True, "_convert_": "all"},
            "c": {"_recursive_": False, "_convert_": "object", "x": 1},
            "d": "${data.name}-${oc.env:USER,nobody}-${now:%Y}-${hydra:runtime.choices.method}",
            "e": "${oc.env:SEGSSL_DATA_DIR,${paths.root_dir}/data}",
            "f": ["${oc.select:data.image_size,null}", "${oc.select:data.x,'a b'}"],
        },
        "x.ckpt",
    )


@pytest.mark.parametrize("resolve", [False, True], ids=["run-folder", "checkpoint"])
@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["method=cps", "model=unet_ssl4mis", "filter=blur", "logger=csv"],
        ["+experiment=la"],
        ["method=bcp", "+model@method.model_2=attention_unet2d", "filter=noise"],
        ["method=unimatch", "filter=max_only", "+experiment=acdc"],
    ],
)
def test_segssls_own_composed_configs_pass_the_check(tmp_path, overrides, resolve):
    """What Hydra saves in .hydra/config.yaml (interpolations kept) and what a checkpoint
    stores (resolved) pass the whole check: targets, special keys, interpolations, sizes."""
    cfg = compose_config("train", overrides, tmp_path / "run")
    config = resolved_config(cfg) if resolve else OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra")
    check_targets(config, "config.yaml")


# -- numbers that size an allocation -------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("num_classes", 10**9),
        ("num_classes", 0),
        ("num_classes", True),
        ("num_classes", 4.0),
        ("num_classes", "4"),
        ("model.out_channels", 10**6),
        ("model.features", [4, 4, 8, 8, 10**7, 4]),
        ("model.features", list(range(1, 40))),
        ("evaluation.image_size", 10**5),
        ("evaluation.patch_size", [4000, 4000, 4000]),
        ("evaluation.stride", [0, 18, 4]),
        ("num_workers", 10**6),
        ("batch_size", -1),
    ],
)
def test_numbers_that_size_an_allocation_are_range_checked(where, value):
    config = {"num_classes": 4, "model": {"out_channels": 4}, "evaluation": {}}
    node = config
    *parents, last = where.split(".")
    for name in parents:
        node = node[name]
    node[last] = value
    with pytest.raises(UntrustedInputError, match=rf"x\.ckpt: refusing 'hp\.{re.escape(where)}: "):
        check_targets(config, "x.ckpt", prefix="hp")


def test_a_protocol_sized_config_is_within_range():
    check_targets(
        {
            "data": {"patch_size": [112, 112, 80], "image_size": None, "num_workers": 16},
            "evaluation": {"image_size": 256, "stride": [18, 18, 4], "batch_size": 4},
            "model": {"features": 16, "channels": [16, 32, 64, 128, 256], "in_channels": 1},
            "num_classes": 118,
            "class_names": [f"c{i}" for i in range(117)],
        },
        "x.ckpt",
    )


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
    assert np.asarray(Image.open(tmp_path / "masks" / "input.png")).shape == (24, 20)


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
    state["segssl_config"]["method"]["_target_"] = "segssl.models.vnet.VNet"  # allowed, no method
    odd = tmp_path / "odd.ckpt"
    torch.save(state, odd)
    with pytest.raises(
        UntrustedInputError, match=rf"{odd}: .*'segssl\.models\.vnet\.VNet' is not a"
    ):
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


# -- the `local` group: this machine's settings, trusted like the user's own configs ----------
def test_the_local_group_is_loaded_by_a_plain_train_and_yields_to_overrides(tmp_path):
    """conf/train.yaml's `optional local: default` (README "What segssl trusts"): a
    ./segssl_configs/local/default.yaml applies to every `train`; the command line and
    `+experiment=` still win."""
    local = tmp_path / "segssl_configs" / "local" / "default.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("# @package _global_\nseed: 123\ntrainer:\n  max_steps: 77\n")

    def job(*overrides: str) -> dict:
        process = start_segssl(["train", *overrides, "--cfg", "job"], tmp_path)
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, output[-3000:]
        return yaml.safe_load(output)

    plain = job()
    assert plain["seed"] == 123 and plain["trainer"]["max_steps"] == 77
    overridden = job("seed=5", "+experiment=acdc_cpu")
    assert overridden["seed"] == 5
    assert overridden["trainer"]["max_steps"] == 2000  # the experiment's protocol
