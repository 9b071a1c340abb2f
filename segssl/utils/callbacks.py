"""Callbacks that show what training sees."""

from __future__ import annotations

import logging
import time
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
        for logger in wandb_loggers(trainer):
            logger.log_image(
                "train/views",
                [str(path)],
                step=trainer.global_step,
                caption=[f"step {trainer.global_step}"],
            )


def wandb_loggers(trainer: pl.Trainer) -> list[pl.loggers.WandbLogger]:
    """The run's W&B loggers. Images and tables go through Lightning's ``log_image`` /
    ``log_table``, which put them on ``trainer/global_step`` like every metric: W&B's own
    ``step=`` would drop a record whose step is behind W&B's row counter."""
    return [lg for lg in trainer.loggers if isinstance(lg, pl.loggers.WandbLogger)]


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


class ValidationOverlays(pl.Callback):
    """After each validation, overlay the selection model's prediction and the reference on the
    middle slice of a few validation volumes (titled with case and step): a PNG in the run
    folder's ``val_overlays/`` and a W&B image when that logger is active.

    At each test (the best and the last checkpoint), with W&B active: a W&B table
    ``<stage>/per_case`` (e.g. ``test/best/per_case``) of the selection model's per-case,
    per-class metrics, the first ``num_cases`` cases with their overlay."""

    def __init__(self, num_cases: int = 3, every: int = 1) -> None:
        """``every``: draw after every N-th validation only (each drawing predicts its volumes
        again and renders a PNG: seconds that a GPU run validating every few seconds cannot
        spare); the last validation of the run is drawn whatever N."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"callbacks.validation_overlays.every={every!r}: expected an int >= 1")
        self.num_cases, self.every = num_cases, every
        self._validations = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        self._validations += 1
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        last = max_steps is not None and trainer.global_step >= max_steps
        if self._validations % self.every and not last:
            return
        datamodule = trainer.datamodule
        volumes = datamodule.volumes(datamodule.val_split)[: self.num_cases]
        if not volumes:
            return
        panels = self._panels(trainer, pl_module, volumes)
        path = Path(trainer.default_root_dir) / "val_overlays" / f"step_{trainer.global_step}.png"
        render_overlays(panels, path, pl_module.selection_model)
        for logger in wandb_loggers(trainer):
            logger.log_image(
                "val/overlays", [str(path)], step=trainer.global_step, caption=[path.stem]
            )

    def on_test_end(self, trainer, pl_module) -> None:
        loggers = wandb_loggers(trainer)
        stage = getattr(pl_module, "evaluation_stage", "test")
        summary = getattr(pl_module, "evaluation_results", {}).get(stage) or {}
        model = getattr(pl_module, "selection_model", None)
        rows = [r for r in summary.get("rows", []) if r.get("model") == model]
        if not loggers or not trainer.is_global_zero or not rows:
            return
        import wandb

        datamodule = trainer.datamodule
        # test_on_val/... is the test of a dataset without a test split
        split = datamodule.val_split if stage.startswith("test_on_val") else datamodule.test_split
        volumes = datamodule.volumes(split)[: self.num_cases]
        images: dict[str, Any] = {}
        folder = Path(trainer.default_root_dir) / "test_overlays" / stage.replace("/", "_")
        for panel in self._panels(trainer, pl_module, volumes):
            path = render_overlays([panel], folder / f"{panel['case']}.png", model)
            images[panel["case"]] = wandb.Image(str(path), caption=panel["title"])
        columns = ["case", "class", "dice", "jaccard", "hd95", "asd", "overlay"]
        data = [[*(r.get(c) for c in columns[:-1]), images.get(str(r["case"]))] for r in rows]
        for logger in loggers:
            logger.log_table(
                f"{stage}/per_case", columns=columns, data=data, step=trainer.global_step
            )

    def _panels(self, trainer, pl_module, volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The middle slice of each volume with its reference and the selection model's
        prediction."""
        panels = []
        evaluator = pl_module.evaluator
        was_training = pl_module.training
        pl_module.eval()
        with torch.inference_mode():
            for volume in volumes:
                probs = evaluator.predict(pl_module.forward, volume["image"], pl_module.device)
                axis = 0 if evaluator.mode == "slices" else -1
                index = volume["image"].shape[axis] // 2
                arrays = (volume["image"], volume["label"], probs.argmax(0).numpy())
                image, label, pred = (np.take(a, index, axis=axis) for a in arrays)
                title = f"{volume['case']} slice {index} @ step {trainer.global_step}"
                panels.append(
                    {
                        "case": str(volume["case"]),
                        "title": title,
                        "image": image,
                        "label": label,
                        "pred": pred,
                    }
                )
        pl_module.train(was_training)
        return panels


def render_overlays(panels: list[dict[str, Any]], path: Path, model_name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        ax.imshow(panel["image"], cmap="gray")
        ax.contour(
            panel["label"],
            levels=np.arange(0.5, panel["label"].max() + 1),
            colors="lime",
            linewidths=0.8,
        )
        ax.contour(
            panel["pred"],
            levels=np.arange(0.5, max(panel["pred"].max(), 1) + 1),
            colors="red",
            linewidths=0.8,
            linestyles="dashed",
        )
        ax.set_title(panel["title"], fontsize=7)
        ax.axis("off")
    fig.suptitle(f"validation: reference (green) vs {model_name} (red dashed)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class StepTimer(pl.Callback):
    """Wall-clock seconds per training step, data loading included, validation excluded.

    Logged as ``time/step_s`` (mean since the previous log) so runs of different methods can be
    compared on cost, and kept in the checkpoint so a resumed run reports the whole run's mean
    (``training`` in results.json). The first step after start or validation is not counted: it
    holds one-off work (worker start-up, cache building, allocator warm-up)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._window_seconds = 0.0
        self._window_steps = 0
        self._previous: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._previous is not None:
            elapsed = now - self._previous
            self.seconds += elapsed
            self.steps += 1
            self._window_seconds += elapsed
            self._window_steps += 1
        self._previous = now
        if self._window_steps and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            pl_module.log("time/step_s", self._window_seconds / self._window_steps)
            self._window_seconds, self._window_steps = 0.0, 0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._previous = None  # the step after validation would count the validation

    def on_train_start(self, trainer, pl_module) -> None:
        self._previous = None

    @property
    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps else None

    def summary(self) -> dict[str, Any]:
        return {"timed_steps": self.steps, "seconds_per_step": self.seconds_per_step}

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict.get("seconds", 0.0))
        self.steps = int(state_dict.get("steps", 0))
