"""UniMatch and its UNet: SSL4MIS's network size, reachable encoder features (and the refusal of
a model without them), the strong augmentations, confidence masking and the loss weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from monai.networks.nets import BasicUNet
from omegaconf import OmegaConf

from segssl.methods import UniMatch
from segssl.methods.batch_augment import brightness_contrast, gaussian_blur
from segssl.methods.mixing import random_boxes
from segssl.methods.region_losses import soft_dice_loss
from segssl.models.unet import count_parameters, encoder_decoder
from segssl.runs.hydra_app import config_dir

SMALL = {"_target_": "segssl.models.unet.UNet", "in_channels": 1, "out_channels": 4,
         "features": [4, 4, 8, 8, 8]}  # fmt: skip


def test_unet_has_ssl4mis_size_and_reachable_features():
    cfg = OmegaConf.load(config_dir() / "model" / "unet_ssl4mis.yaml")
    cfg.out_channels = 4
    cfg = {k: v for k, v in cfg.items() if k not in ("channels_last", "compile")}
    model = instantiate(cfg).eval()
    # SSL4MIS's UNet(in_chns=1, class_num=4); the same count as UniMatch's model/unet.py
    assert count_parameters(model) == 1_813_764
    x = torch.randn(2, 1, 32, 32)
    features = model.encode(x)
    assert [f.shape[1:] for f in features] == [
        (16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2)
    ]  # fmt: skip
    with torch.no_grad():
        assert torch.equal(model.decode(features), model(x))
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 1, 24, 24))


def test_basic_unet_features_decode_to_its_own_forward():
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=(4, 4, 8, 8, 8, 4))
    encode, decode = encoder_decoder(net.eval())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(decode(encode(x)), net(x))


def make_unimatch(model: dict = SMALL, **kwargs) -> UniMatch:
    method = UniMatch(
        model=model,
        num_classes=4,
        class_names=["RV", "Myo", "LV"],
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.01},
        evaluation={"image_size": 16},
        **kwargs,
    )
    method._trainer = SimpleNamespace(max_steps=10, global_step=0)
    return method


def test_a_model_without_reachable_features_is_refused():
    attention = {
        "_target_": "monai.networks.nets.AttentionUnet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 4,
        "channels": [4, 8],
        "strides": [2],
    }
    with pytest.raises(ValueError, match="AttentionUnet.*model=unet_ssl4mis"):
        make_unimatch(attention)


def test_intensity_jitter_and_blur():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 16, 16)
    assert torch.equal(brightness_contrast(images, 0.5, 0.5, p=0.0), images)
    assert torch.equal(gaussian_blur(images, p=0.0), images)
    jittered = brightness_contrast(images, 0.5, 0.5, p=1.0)
    assert jittered.min() >= 0 and jittered.max() <= 1  # clipped as PIL clips [0, 1] images
    ratio = jittered.std(dim=(1, 2, 3)) / images.std(dim=(1, 2, 3))
    assert ratio.min() > 0.2 and ratio.max() < 2.3 and ratio.std() > 0.1  # factors in [0.5, 1.5]
    flat = torch.full((4, 1, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, p=1.0), flat)  # normalised kernels
    blurred = gaussian_blur(images, p=1.0, sigma=(1.5, 2.0))
    assert (blurred.std(dim=(1, 2, 3)) < 0.6 * images.std(dim=(1, 2, 3))).all()


def test_cutmix_boxes_fit_and_follow_the_area_range():
    torch.manual_seed(0)
    boxes = random_boxes(200, 32, 32, p=0.5)
    area = boxes.mean(dim=(1, 2))
    drawn = area > 0
    assert 60 < int(drawn.sum()) < 140
    assert area[drawn].min() >= 0.005 and area[drawn].max() <= 0.4
    rows, cols = boxes[drawn].amax(2), boxes[drawn].amax(1)  # a box is one rectangle
    assert torch.equal(boxes[drawn].sum((1, 2)), rows.sum(1) * cols.sum(1))
    assert not random_boxes(10, 32, 32, p=0.0).any()


def test_confidence_mask_leaves_out_unconfident_pixels():
    probs = torch.softmax(torch.randn(2, 4, 8, 8), 1)
    target = torch.randint(0, 4, (2, 8, 8))
    keep = torch.rand(2, 8, 8) > 0.5
    other = torch.where(keep, target, (target + 1) % 4)  # differs only where left out
    assert soft_dice_loss(probs, target, keep.float()) == soft_dice_loss(probs, other, keep.float())
    assert soft_dice_loss(probs, target) != soft_dice_loss(probs, other)


def batch(n: int = 2, size: int = 16) -> dict:
    torch.manual_seed(0)
    labeled = {
        "image_1": torch.rand(n, 1, size, size),
        "label": torch.randint(0, 4, (n, 1, size, size)),
    }
    unlabeled = {k: torch.rand(n, 1, size, size) for k in ("image", "image_1", "image_2")}
    return {"labeled": labeled, "unlabeled": unlabeled}


def test_loss_weights_and_threshold():
    method = make_unimatch(conf_thresh=0.0)  # every pixel confident
    losses = method.training_losses(batch())
    expected = (
        losses["sup"]
        + 0.25 * losses["strong_1"]
        + 0.25 * losses["strong_2"]
        + 0.5 * losses["feature_perturbation"]
    ) / 2
    assert torch.allclose(losses["loss"], expected)
    assert (
        losses["mask_ratio"] == 1.0
        and losses["strong_1"] > 0
        and losses["feature_perturbation"] > 0
    )
    losses["loss"].backward()
    assert method.networks["net"].out_conv.weight.grad.abs().sum() > 0
    assert method.networks["net"].training  # back in train mode after the eval-mode partner pass
    # nothing reaches a threshold above 1: the unlabeled terms vanish
    strict = make_unimatch(conf_thresh=1.01).training_losses(batch())
    assert strict["mask_ratio"] == 0.0 and strict["strong_1"] == strict["feature_perturbation"] == 0
    assert torch.allclose(strict["loss"], strict["sup"] / 2)
