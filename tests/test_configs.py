"""Every file of conf/model/, conf/experiment/ and conf/filter/ (found by globbing, as
lightning-hydra-template's tests/test_sweeps.py does, so a new file is tested with no list to
edit) composes and builds what it names; methods are swept in test_method_base.py,
test_methods_smoke.py and test_train.py. Nothing here trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from segssl.utils.trust import is_allowed_target
from tests.conftest import SHARED_DATA, TINY, compose_config
from tests.helpers.configs import group_options


def spatial_dims(network: nn.Module) -> int:
    """2 or 3, from the network's first convolution."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            return 2 if isinstance(module, nn.Conv2d) else 3
    raise AssertionError(f"{type(network).__name__} has no convolution")


@pytest.mark.parametrize("model", group_options("model"))
def test_each_model_builds_a_method_and_keeps_the_input_size(model, tmp_path):
    """2-D models on the tiny 2-D data, 3-D ones in the LA (3-D) protocol."""
    overrides = [*TINY, "method=supervised", f"model={model}"]
    cfg = compose_config("train", overrides, tmp_path / "2d")
    method = instantiate(cfg.method)
    if spatial_dims(method.networks["net"]) == 3:
        overrides = ["+experiment=la", "method=supervised", f"model={model}", "data.root=/none"]
        cfg = compose_config("train", overrides, tmp_path / "3d")
        method = instantiate(cfg.method)
        x = torch.rand(1, 1, 16, 16, 16)
    else:
        x = torch.rand(2, 1, 32, 32)
    assert is_allowed_target(cfg.model._target_)
    with torch.no_grad():
        out = method.eval().run_network("net", x)
    assert out.shape == (x.shape[0], cfg.data.num_classes, *x.shape[2:])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_each_experiment_composes_its_protocol(experiment, tmp_path):
    """``+experiment=NAME`` as users type it: named, tagged, a whole protocol; its data module
    is built and its split lists read where the real data is present."""
    cfg = compose_config("train", [f"+experiment={experiment}"], tmp_path / "run", SHARED_DATA)
    assert cfg.experiment_name == experiment and experiment in cfg.tags
    assert cfg.method_name == cfg.hydra.runtime.choices.method
    assert cfg.trainer.max_steps > 0 and cfg.trainer.val_check_interval > 0
    for key in ("data", "model", "method", "filter"):
        assert is_allowed_target(cfg[key]._target_), key
    assert cfg.model.out_channels == cfg.data.num_classes == len(cfg.data.class_names) + 1
    if not Path(cfg.data.root).is_dir():
        pytest.skip(f"real data {cfg.data.root} not present: composed only")
    # the files are listed, not read: reading every ACDC slice takes ~20 s (train tests do it)
    datamodule = instantiate(cfg.data, views=instantiate(cfg.filter), num_workers=0)
    assert len(datamodule.layout.ids("train")) > cfg.data.labeled
    assert datamodule.layout.has_split(datamodule.resolve_test_split())


@pytest.mark.parametrize("name", group_options("filter"))
def test_each_filter_makes_two_views_of_the_image(name, tmp_path):
    cfg = compose_config("train", [*TINY, f"filter={name}", "filter.p=1.0"], tmp_path / name)
    views = instantiate(cfg.filter)
    image = torch.rand(1, 32, 32)
    out = views({"image": image.clone()})
    assert torch.equal(out["image"], image)  # the unfiltered image is kept as it was
    for key in ("image_1", "image_2"):
        assert out[key].shape == image.shape and out[key].dtype == image.dtype
        assert torch.isfinite(out[key]).all()
