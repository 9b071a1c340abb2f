"""Callbacks that show what training sees."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def middle_slice(x: torch.Tensor) -> np.ndarray:
    """A 2-D picture of a (C, H, W) or (C, H, W, D) item: channel 0, middle of the last axis."""
    array = x.detach().float().cpu().numpy()[0]
    return array[..., array.shape[-1] // 2] if array.ndim == 3 else array


class TrainingViewsLogger(pl.Callback):
    """At the first validation, save a PNG of a few training samples with the two views the
    networks were given (and their labels), and send it to W&B if that logger is active."""

    def __init__(self, num_samples: int = 4, filename: str = "training_views.png") -> None:
        self.num_samples, self.filename = num_samples, filename
        self._samples: list[dict[str, Any]] = []
        self._done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._done or self._samples:
            return
        for stream, part in batch.items():
            for i in range(min(self.num_samples, part["image_1"].shape[0])):
                self._samples.append(
                    {
                        "title": f"{stream} {part['case'][i]}",
                        "image": middle_slice(part.get("image", part["image_1"])[i]),
                        "view 1": middle_slice(part["image_1"][i]),
                        "view 2": middle_slice(part["image_2"][i]),
                        "label": middle_slice(part["label"][i]) if "label" in part else None,
                    }
                )

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._done or not self._samples or not trainer.is_global_zero:
            return
        self._done = True
        path = Path(trainer.default_root_dir) / self.filename
        render_views(self._samples, path, step=trainer.global_step)
        log.info("Training samples and their two views: %s", path)
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                import wandb

                logger.experiment.log(
                    {"train/views": wandb.Image(str(path), caption=f"step {trainer.global_step}")},
                    step=trainer.global_step,
                )


def render_views(samples: list[dict[str, Any]], path: Path, step: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["image", "view 1", "view 2", "label"]
    fig, axes = plt.subplots(len(samples), 4, figsize=(10, 2.6 * len(samples)), squeeze=False)
    for row, sample in zip(axes, samples, strict=True):
        for ax, column in zip(row, columns, strict=True):
            ax.axis("off")
            if sample[column] is None:
                ax.set_title("label: (unlabeled)", fontsize=8)
                continue
            cmap = "viridis" if column == "label" else "gray"
            ax.imshow(sample[column], cmap=cmap, interpolation="nearest")
            ax.set_title(
                f"{column}: {sample['title']}" if column == "image" else column, fontsize=8
            )
    fig.suptitle(f"training samples at step {step}: network 1 sees view 1, network 2 view 2")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
