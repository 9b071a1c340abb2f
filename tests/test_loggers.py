"""Our loggers on Lightning's public API: the appending CSV log (fresh, new columns, resumed,
cut short, rank zero only) and a W&B logger that is rebuilt from our own record of its
arguments, or dropped, never a crash."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from segssl.utils.loggers import (
    WANDB_KWARGS,
    AppendingCSVLogger,
    appending_csv_logger,
    start_loggers,
    wandb_logger,
)

REPO = Path(__file__).resolve().parents[1]


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_fresh_log_then_a_new_column_extends_the_header(tmp_path: Path) -> None:
    logger = appending_csv_logger(tmp_path)
    path = tmp_path / "csv" / "version_0" / "metrics.csv"
    assert logger.metrics_file == path and logger.log_dir == str(path.parent)
    logger.log_metrics({"train/loss": torch.tensor(0.5), "epoch": 0}, step=0)
    logger.log_metrics({"train/loss": 0.25, "epoch": 0}, step=1)
    logger.save()
    header, rows = read(path)
    assert header == ["epoch", "step", "train/loss"]
    assert [(r["step"], r["train/loss"]) for r in rows] == [("0", "0.5"), ("1", "0.25")]

    logger.log_metrics({"val/dice": 0.75, "epoch": 0}, step=1)
    logger.log_metrics({"train/loss": 0.125, "epoch": 0}, step=2)
    logger.save()
    header, rows = read(path)
    assert header == ["epoch", "step", "train/loss", "val/dice"]
    assert [r["val/dice"] for r in rows] == ["", "", "0.75", ""]
    assert [r["train/loss"] for r in rows] == ["0.5", "0.25", "", "0.125"]
    assert not [p for p in path.parent.iterdir() if p.name != "metrics.csv"]  # no temporaries


def test_a_resumed_run_appends_and_keeps_columns(tmp_path: Path) -> None:
    first = AppendingCSVLogger(tmp_path)
    for step in range(3):
        first.log_metrics({"train/loss": 1.0 / (step + 1), "lr": 0.01}, step=step)
    first.save()
    header_before, rows_before = read(first.metrics_file)

    resumed = AppendingCSVLogger(tmp_path)  # a new process on the same run folder
    resumed.log_metrics({"train/loss": 0.2, "lr": 0.01}, step=3)
    resumed.save()
    header, rows = read(resumed.metrics_file)
    assert header == header_before and rows[:3] == rows_before
    assert rows[3]["step"] == "3"
    assert resumed.metrics_file.read_text().count("step") == 1  # one header line

    resumed.log_metrics({"val/dice": 0.5}, step=4)
    resumed.finalize("success")  # Lightning's finalize flushes through save()
    header, rows = read(resumed.metrics_file)
    assert header == ["lr", "step", "train/loss", "val/dice"]
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[:3] == [{**r, "val/dice": ""} for r in rows_before]


def test_a_row_cut_short_by_a_kill_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("step,train/loss\n0,0.5\n1,0.2")  # killed while writing row 1
    logger = AppendingCSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 0.3}, step=1)
    logger.save()
    assert path.read_text() == "step,train/loss\n0,0.5\n1,0.3\n"


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = AppendingCSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 0.5}, step=0)
    logger.save()
    logger.finalize("success")
    assert not (tmp_path / "csv").exists()


def test_lightning_fit_twice_continues_one_log(tmp_path: Path) -> None:
    """Through a real Trainer: logged every step, saved by Lightning, the second fit appends."""
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(steps: int) -> None:
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)))
        trainer = pl.Trainer(
            max_steps=steps,
            logger=AppendingCSVLogger(tmp_path),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Tiny(), data)

    fit(3)
    _, rows = read(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    fit(2)
    header, rows = read(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert header == ["epoch", "step", "train/loss"]
    assert [r["step"] for r in rows] == ["0", "1", "2", "0", "1"]


def test_wandb_logger_keeps_its_own_arguments(tmp_path: Path) -> None:
    logger = wandb_logger(save_dir=str(tmp_path), project="segssl-test", name="n", tags=["a"])
    assert isinstance(logger, WandbLogger)
    assert getattr(logger, WANDB_KWARGS) == {
        "save_dir": str(tmp_path),
        "project": "segssl-test",
        "name": "n",
        "tags": ["a"],
    }


def test_a_wandb_logger_that_cannot_start_is_dropped_not_fatal(tmp_path: Path) -> None:
    class Broken(WandbLogger):
        @property
        def experiment(self):
            raise RuntimeError("no W&B here")

    csv_logger = AppendingCSVLogger(tmp_path)
    # built elsewhere (no arguments of ours to rebuild it from): dropped at the first failure
    assert start_loggers([Broken(save_dir=str(tmp_path)), csv_logger], wait_s=0) == [csv_logger]


def test_a_run_id_that_cannot_be_continued_is_rebuilt_from_our_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segssl.utils.loggers as loggers

    class Broken(WandbLogger):
        @property
        def experiment(self):
            raise RuntimeError("run cannot be resumed")

    class Started(WandbLogger):
        @property
        def experiment(self):
            return "started"

    built = []

    def rebuild(**kwargs):
        built.append(kwargs)
        return Started(save_dir=str(tmp_path))

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(loggers, "wandb_logger", rebuild)
    monkeypatch.setattr(loggers, "stop_orphaned_wandb_services", lambda: None)
    broken = Broken(save_dir=str(tmp_path))
    given = {"save_dir": str(tmp_path), "project": "p", "id": "abc123", "resume": "allow"}
    setattr(broken, WANDB_KWARGS, given)
    (started,) = start_loggers([broken], wait_s=0)
    assert isinstance(started, Started)
    assert built == [{"save_dir": str(tmp_path), "project": "p"}]  # same run, a new id
    assert given["id"] == "abc123"  # the logger's own record is not changed


def test_no_private_lightning_attributes_in_segssl() -> None:
    private = re.compile(r"\._experiment\b|_wandb_init|_check_log_dir")
    hits = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "segssl").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not hits, f"private Lightning attributes used at {hits}"
