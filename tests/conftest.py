"""Shared fixtures: a tiny synthetic dataset and a way to run the Hydra tasks in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from segssl.runs.hydra_app import config_dir

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("SEGSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

# The smallest synthetic dataset with every split (ensure_synthetic_dataset's arguments).
SMALL_SYNTHETIC = dict(
    num_train_patients=2,
    num_val_patients=1,
    num_test_patients=1,
    image_size=32,
    slices_per_volume=4,
    seed=3,
)

# A dataset and run small enough for a few seconds on 2 CPU cores.
TINY = [
    "data.synthetic.num_train_patients=4",
    "data.synthetic.num_val_patients=2",
    "data.synthetic.num_test_patients=2",
    "data.synthetic.image_size=32",
    "data.synthetic.slices_per_volume=4",
    "data.labeled=1",
    "data.image_size=32",
    "data.batch_size=4",
    "data.labeled_batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=3",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run tiny models on one thread: with two, PyTorch's OpenMP threads spin against any
    other process on a 2-core machine and tiny steps get up to 100x slower (measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def root_log_handlers():
    """A command run in-process (Hydra configures logging) leaves handlers on the root logger
    that write to that test's captured stream; a later test would log into a closed stream."""
    import logging

    handlers, level = list(logging.root.handlers), logging.root.level
    yield
    for handler in logging.root.handlers:
        if handler not in handlers:
            logging.root.removeHandler(handler)
    for handler in handlers:
        if handler not in logging.root.handlers:
            logging.root.addHandler(handler)
    logging.root.setLevel(level)


def shared_data(name: str) -> Path:
    """Path of a real dataset beside the repo, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not present (set SEGSSL_SHARED_DATA to its parent folder)")
    return path


def compose_config(
    config_name: str, overrides: list[str], output_dir: Path, data_dir: Path | None = None
) -> DictConfig:
    """Compose a config as the CLI would, with the run folder at ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir.parent)
        cfg.hydra.job.num = 0
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parent folder holding the tiny synthetic dataset, generated once per session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def run_task(tmp_path: Path, tiny_data_dir: Path):
    """Run ``train``/``test`` in-process on the tiny data; returns (output_dir, result)."""

    def run(overrides: list[str], task: str = "train", name: str = "run"):
        output_dir = tmp_path / name
        cfg = compose_config(task, overrides, output_dir, tiny_data_dir)
        if task == "train":
            from segssl.commands.train import train as fn
        else:
            from segssl.commands.test import test as fn
        result = fn(cfg)
        return output_dir, result, cfg

    return run


def segssl_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m segssl`` child: this checkout first, W&B offline."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": path, **extra}


def start_segssl(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``python -m segssl ARGS`` as a child process (output merged, text), started in ``cwd``."""
    return subprocess.Popen(
        [sys.executable, "-m", "segssl", *args],
        cwd=cwd,
        env=segssl_env(PYTHONUNBUFFERED="1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def save_as_lightning(method, cfg: DictConfig, path: Path) -> Path:
    """What Lightning's checkpoint connector writes for a module (weights, ``dict(hparams)``)
    and what the method adds (its run config): a checkpoint without a training run."""
    import pytorch_lightning as pl
    import torch

    from segssl.runs.results import resolved_config

    method.run_config = resolved_config(cfg)
    state = {
        "state_dict": method.state_dict(),
        "hyper_parameters": dict(method.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    method.on_save_checkpoint(state)
    torch.save(state, path)
    return path
