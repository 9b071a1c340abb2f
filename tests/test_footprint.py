"""What the memory estimate reads without building anything is what the code does: each
method's declared ``trained_networks`` are the networks its optimiser trains, and each
configured network reports a footprint (``segssl.models.footprint``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from segssl.models.footprint import FOOTPRINTS, Footprint, footprint_of
from segssl.runs.hydra_app import config_dir
from tests.conftest import TINY, compose_config
from tests.helpers.configs import group_options


@pytest.mark.parametrize("method", group_options("method"))
def test_declared_trained_networks_are_those_the_optimiser_trains(method, tmp_path):
    import pytorch_lightning as pl

    cfg = compose_config("train", [*TINY, f"method={method}"], tmp_path / "run")
    module = instantiate(cfg.method)
    module.trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    groups = module.configure_optimizers()["optimizer"].param_groups
    owner = {id(p): name for name, net in module.networks.items() for p in net.parameters()}
    optimised = {owner[id(p)] for group in groups for p in group["params"]}
    declared = type(module).trained_networks
    assert len(set(declared)) == len(declared)
    assert set(declared) == optimised == set(module.trainable())
    assert set(declared) <= set(type(module).network_names)


@pytest.mark.parametrize("model", group_options("model"))
def test_every_configured_network_reports_a_footprint(model):
    config = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / f"{model}.yaml"))
    found = footprint_of(config)
    assert isinstance(found, Footprint) and found.pyramid
    # each is a real class of its library, so a renamed target cannot go unchecked silently
    assert get_class(config["_target_"]) is not None


def test_monai_aliases_share_one_footprint():
    for target in FOOTPRINTS:
        assert get_class(target) is not None  # every key names a real class
    config = {"spatial_dims": 2, "features": [16, 32, 64, 128, 256, 16]}
    names = ("BasicUNet", "BasicUnet", "basicunet", "basic_unet.BasicUNet")
    found = {footprint_of({"_target_": f"monai.networks.nets.{n}", **config}) for n in names}
    assert len({(f.spatial_dims, f.pyramid, f.tensors_per_level) for f in found}) == 1


def test_a_network_that_reports_nothing_has_no_footprint():
    assert footprint_of({"_target_": "monai.networks.nets.UNet", "spatial_dims": 2}) is None
    assert footprint_of({}) is None


def test_sides_and_size_rules():
    unet = footprint_of({"_target_": "segssl.models.unet.UNet"})
    assert unet is not None and unet.spatial_dims == 2
    assert unet.sides(48) == (48, 48) and unet.sides([32, 64]) == (32, 64)
    assert unet.sides([32, 0]) is None and unet.sides(True) is None and unet.sides("32") is None
    assert unet.size_problem((48, 48)) is None
    assert "expected multiples of 16 (e.g. 32x48)" in unet.size_problem((40, 50))
    vnet = footprint_of({"_target_": "segssl.models.vnet.VNet", "features": 8})
    assert vnet is not None and vnet.pyramid == (8, 16, 32, 64, 128)
    assert vnet.size_problem((17, 33, 5)) is None  # it pads any size


def test_footprints_and_the_planner_import_without_torch():
    code = (
        "import sys, segssl.models.footprint, segssl.planning.planner; "
        "print(sorted(m for m in ('torch', 'monai', 'pytorch_lightning') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
