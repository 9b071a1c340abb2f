"""Settings that cannot work are refused before anything is built, naming the setting."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from segssl.models.footprint import BASIC_UNET_TENSORS
from segssl.runs import settings_check
from segssl.runs.settings_check import SettingsError, activation_bytes, check_training_settings
from tests.conftest import TINY, compose_config

GiB = 2**30


LA = ["data=la", "model=vnet", "evaluation=sliding_window", "data.num_workers=0"]


def compose(tmp_path, overrides: list[str]):
    base = [] if "data=la" in overrides else TINY
    return compose_config("train", [*base, *overrides], tmp_path / "run", tmp_path / "data")


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the tiny test config
        ["trainer.max_steps=600", "trainer.val_check_interval=100", "data.image_size=64"],
        ["model=attention_unet2d", "data.image_size=48"],
        ["model=unet_ssl4mis", "data.image_size=48"],
        ["data.image_size=50"],  # BasicUNet pads odd sizes
        [*LA, "data.patch_size=[112,112,80]", "trainer.accelerator=cpu"],
        ["trainer.val_check_interval=0.5"],
        ["seed=0"],
    ],
)
def test_settings_that_work_pass(tmp_path, overrides):
    check_training_settings(compose(tmp_path, overrides))


def test_the_default_config_passes(tmp_path):
    check_training_settings(compose_config("train", [], tmp_path / "run"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.max_steps=-1"], "trainer.max_steps=-1: expected a positive whole number"),
        (["trainer.max_steps=0"], "trainer.max_steps=0: expected a positive whole number"),
        (["trainer.max_steps=2.5"], "trainer.max_steps=2.5: expected a positive whole number"),
        (["trainer.val_check_interval=0"], "trainer.val_check_interval=0: expected a positive"),
        (["trainer.val_check_interval=-5"], "trainer.val_check_interval=-5: expected a positive"),
        (["trainer.val_check_interval=2.5"], "trainer.val_check_interval=2.5: expected a"),
        (["seed=abc"], "seed='abc': expected a whole number in 0..4294967295"),
        (["seed=1.5"], "seed=1.5: expected a whole number"),
        (["seed=-1"], "seed=-1: expected a whole number"),
        (["data.image_size=0"], "data.image_size=0: expected a positive int or 2 positive ints"),
        (["data.image_size=20"], "data.image_size=20: model=unet2d"),
        (["data.image_size=[32,0]"], "data.image_size=[32, 0]: expected a positive int"),
        (
            ["model=attention_unet2d", "data.image_size=40"],
            "data.image_size=40: model=attention_unet2d (monai.networks.nets.AttentionUnet) "
            "down-samples by 16 and cannot pad: expected multiples of 16",
        ),
        (
            ["model=unet_ssl4mis", "data.image_size=40"],
            "data.image_size=40: model=unet_ssl4mis (segssl.models.unet.UNet) pools 4 times and "
            "concatenates skips without padding: expected multiples of 16 (e.g. 32x32)",
        ),
        (
            [*LA, "data.patch_size=[112,0,80]"],
            "data.patch_size=[112, 0, 80]: expected 3 positive ints for model=vnet",
        ),
        (["data.image_size=8192"], "data.image_size=8192 with data.batch_size=4: one training"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path, overrides, expected):
    with pytest.raises(SettingsError) as raised:
        check_training_settings(compose(tmp_path, overrides))
    assert expected in str(raised.value)


def test_every_problem_is_listed_at_once(tmp_path):
    cfg = compose(tmp_path, ["trainer.max_steps=-1", "seed=abc", "data.image_size=0"])
    with pytest.raises(SettingsError) as raised:
        check_training_settings(cfg)
    message = str(raised.value)
    assert all(key in message for key in ("trainer.max_steps=", "seed=", "data.image_size="))


def test_validation_that_never_runs_is_a_warning(tmp_path, caplog):
    cfg = compose(tmp_path, ["trainer.max_steps=5", "trainer.val_check_interval=10"])
    with caplog.at_level(logging.WARNING, logger=settings_check.__name__):
        check_training_settings(cfg)
    assert "trainer.val_check_interval=10 > trainer.max_steps=5: validation never runs" in (
        caplog.text
    )


def test_activation_estimate_scales_with_size_batch_and_networks(tmp_path):
    base = activation_bytes(compose(tmp_path, ["data.image_size=64", "data.batch_size=4"]))
    # 4x the pixels at every level, 2x the batch
    bigger = activation_bytes(compose(tmp_path, ["data.image_size=128", "data.batch_size=8"]))
    assert bigger == 8 * base
    # dsaif trains two networks; supervised one; a mean teacher's teacher has no gradients
    one = activation_bytes(compose(tmp_path, ["data.image_size=64", "method=supervised"]))
    teacher = activation_bytes(compose(tmp_path, ["data.image_size=64", "method=mean_teacher"]))
    assert base == 2 * one == 2 * teacher
    # BasicUNet 16..256 at 64x64: sum of channels x pixels over 5 levels = 126976 values
    assert one == BASIC_UNET_TENSORS * 126976 * 4 * 4


@pytest.mark.parametrize("model", ["unet2d", "unet_ssl4mis"])
def test_the_estimate_is_near_what_autograd_keeps(tmp_path, model):
    """The documented estimate: within a factor of two of the tensors a real training forward
    of the configured network keeps for backward."""
    import torch
    from hydra.utils import instantiate

    overrides = ["data.image_size=96", "data.batch_size=2", "method=supervised", f"model={model}"]
    cfg = compose(tmp_path, overrides)
    net = instantiate({k: v for k, v in cfg.model.items() if k not in ("channels_last", "compile")})
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.train()(torch.randn(2, 1, 96, 96))
    measured, estimate = sum(kept.values()), activation_bytes(cfg)
    assert measured / 2 <= estimate <= measured * 2, (measured, estimate)


def test_memory_is_judged_against_the_device(tmp_path, monkeypatch):
    cfg = compose(tmp_path, ["data.image_size=256", "data.batch_size=24"])
    needed = activation_bytes(cfg)
    monkeypatch.setattr(
        settings_check, "available_bytes", lambda cfg: (needed // 2, "free memory of a test GPU")
    )
    with pytest.raises(SettingsError, match="but the free memory of a test GPU is"):
        check_training_settings(cfg)
    monkeypatch.setenv("SEGSSL_SKIP_MEMORY_CHECK", "1")
    check_training_settings(cfg)
    monkeypatch.delenv("SEGSSL_SKIP_MEMORY_CHECK")
    monkeypatch.setattr(settings_check, "available_bytes", lambda cfg: (needed * 4, "RAM"))
    check_training_settings(cfg)


def test_available_ram_is_read(tmp_path):
    found = settings_check.available_bytes(compose(tmp_path, ["trainer.accelerator=cpu"]))
    assert found is not None and found[0] > 0


@pytest.mark.slow
def test_train_refuses_before_building_anything(tmp_path):
    """Through the CLI: the error names the setting, and no data is generated."""
    run = subprocess.run(
        [sys.executable, "-m", "segssl", "train", *TINY, "trainer.max_steps=-1", "seed=abc"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"SEGSSL_DATA_DIR": str(tmp_path / "data"), **_env()},
    )
    assert run.returncode != 0
    assert "trainer.max_steps=-1: expected a positive whole number" in run.stderr
    assert "seed='abc'" in run.stderr
    assert not (tmp_path / "data").exists()  # the synthetic data was never written


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "WANDB_MODE": "offline"}
