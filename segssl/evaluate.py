"""The ``test`` command: evaluate a checkpoint on a split, rebuilding everything from the
config stored inside it (so it works on a checkpoint from another machine)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from segssl.data.readers import DataError
from segssl.utils.run import resolved_config, save_evaluation

log = logging.getLogger(__name__)


def load_run_config(ckpt_path: Path) -> dict[str, Any]:
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{ckpt_path}: cannot read as a PyTorch checkpoint ({err})") from err
    config = checkpoint.get("segssl_config") if isinstance(checkpoint, dict) else None
    if not config:
        raise ValueError(f"{ckpt_path}: not a segssl checkpoint (no stored 'segssl_config')")
    return config


def load_method(method_cls: type, ckpt_path: Path):
    """The method with the checkpoint's weights; weights of another model are a clear error."""
    try:
        return method_cls.load_from_checkpoint(ckpt_path, map_location="cpu")
    except RuntimeError as err:
        raise ValueError(
            f"{ckpt_path}: its weights do not fit the model of its stored config "
            f"({str(err).splitlines()[0]})"
        ) from err


def test(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = Path(cfg.ckpt_path).expanduser().resolve()
    run = OmegaConf.create(load_run_config(ckpt_path))
    if cfg.get("data_root"):
        run.data.root = str(Path(cfg.data_root).expanduser())
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(run.data, views=None)
    split = cfg.get("split") or datamodule.resolve_test_split()
    if not datamodule.layout.has_split(split):
        raise DataError(f"split {split!r} not found: {datamodule.layout.list_path(split)}")
    datamodule.test_split = split
    method_cls = get_class(run.method._target_)
    method = load_method(method_cls, ckpt_path)
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
    save_evaluation(output_dir, summary, split=split, checkpoint=str(ckpt_path), config=config)
    return summary
