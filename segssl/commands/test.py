"""The ``test`` command: evaluate a checkpoint on a split, rebuilding everything from the
config stored inside it (so it works on a checkpoint from another machine)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segssl.data.readers import DataError
from segssl.methods.from_checkpoint import build_method, read_checkpoint
from segssl.runs.hydra_app import accept_run_folder
from segssl.runs.lock import RunLock, refuse_reuse
from segssl.runs.results import resolved_config, save_evaluation

log = logging.getLogger(__name__)


def test(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    # one owner per folder, and never a folder that holds a run: its results and .hydra/ stay
    refuse_reuse(output_dir, "test")  # before the lock: a run's stale lock stays as it is
    with RunLock(output_dir):
        refuse_reuse(output_dir, "test")
        return _test(cfg, output_dir)


def _test(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    # read as data and checked against the allow-list before anything is built
    checkpoint = read_checkpoint(cfg.ckpt_path)
    run = OmegaConf.create(checkpoint.config)
    if cfg.get("data_root"):
        run.data.root = str(Path(cfg.data_root).expanduser())
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(run.data, views=None)
    split = cfg.get("split") or datamodule.resolve_test_split()
    check_split(datamodule, split)
    datamodule.test_split = split
    method = build_method(checkpoint)
    accept_run_folder()  # all inputs read: only now are .hydra/ and the log written
    method.evaluation_stage = split
    trainer = pl.Trainer(
        accelerator=cfg.get("accelerator", "auto"),
        devices=1,
        logger=False,
        default_root_dir=str(output_dir),
        enable_model_summary=False,
    )
    trainer.test(method, datamodule=datamodule, verbose=False)
    summary = method.evaluation_results[split]
    config = {"test": resolved_config(cfg), "run": OmegaConf.to_container(run)}
    save_evaluation(
        output_dir, summary, split=split, checkpoint=str(checkpoint.path), config=config
    )
    return summary


def check_split(datamodule: Any, split: str) -> None:
    """Evaluation reads whole volumes. A layout that trains on 2-D slices (SSL4MIS, folder with
    dims=2) has slices, not volumes, in its ``train`` split, so ``split=train`` is refused
    there, before the model is built; layouts that train on volumes evaluate it as any split."""
    layout = datamodule.layout
    if split == "train" and layout.train_ndim != 3:
        raise DataError(
            f"split=train: data.layout={datamodule.layout_name!r} trains on 2-D slices and "
            f"`segssl test` evaluates whole volumes; use split=val or split=test"
        )
    if not layout.has_split(split):
        raise DataError(f"split {split!r} not found: {layout.list_path(split)}")
