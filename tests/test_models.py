"""The 3-D VNet: the benchmark size (parameter count, output shape) and any input size."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segssl.models.vnet import VNet, count_parameters
from segssl.runs.hydra_app import config_dir


def test_vnet_benchmark_size_and_output_shape():
    """UA-MT / MC-Net's VNet: 9.45M parameters with 2 classes; logits at the input size."""
    torch.manual_seed(0)
    model = VNet(in_channels=1, out_channels=2).eval()
    assert count_parameters(model) == 9_448_866
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64, 48))
    assert out.shape == (1, 2, 64, 64, 48)
    assert torch.isfinite(out).all()


def test_vnet_config_builds_the_benchmark_model():
    cfg = OmegaConf.load(config_dir() / "model" / "vnet.yaml")
    cfg.out_channels = 2
    assert count_parameters(instantiate(cfg)) == 9_448_866


def test_vnet_pads_sizes_not_divisible_by_16_and_crops_back():
    """A 24-deep patch (LA smoke runs) or an odd window must not break the skip additions, and
    the padding must not leak: a voxel's logits depend on the input as for the padded input."""
    torch.manual_seed(0)
    model = VNet(out_channels=3, features=4).eval()
    x = torch.randn(2, 1, 33, 17, 24)
    with torch.no_grad():
        out = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 8, 0, 15, 0, 15)))
    assert out.shape == (2, 3, 33, 17, 24)
    assert torch.allclose(out, padded[:, :, :33, :17, :24], atol=1e-5)


def test_vnet_dropout_only_in_training():
    model = VNet(features=4, dropout=0.5)
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match="model.dropout"):
        VNet(dropout=1.0)
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        model(torch.randn(1, 16, 16, 16))
