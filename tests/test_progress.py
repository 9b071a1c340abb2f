"""The step progress bar: global step out of max_steps across epochs, time left for the run,
the latest validation Dice, the run folder named first, and lines (not bars) in a log file."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytorch_lightning as pl
import torch

from segssl.utils.progress import StepProgressBar, format_seconds, progress_text

REPO = Path(__file__).resolve().parents[1]


class Tiny(pl.LightningModule):
    """Three batches an epoch, so a 7-step run crosses epochs; logs what segssl's methods log
    on the bar (train/loss, val/dice)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/dice", 0.5 + 0.01 * self.global_step, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path: Path, bar: StepProgressBar, max_steps: int = 7) -> pl.Trainer:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 2)))
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path / "run"),
        max_steps=max_steps,
        max_epochs=-1,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(Tiny(), data, data)
    return trainer


def test_text_says_step_of_run_time_left_and_metrics():
    text = progress_text(120, 200, 0.5, {"train/loss": torch.tensor(0.41349), "val/dice": 0.72})
    assert text == "step 120/200 (60%) | 0.5 s/step | 0:40 left | train/loss 0.4135 | val/dice 0.72"
    assert progress_text(0, 200, None, {}) == "step 0/200 (0%)"
    assert format_seconds(3725) == "1:02:05" and format_seconds(59.6) == "1:00"


def test_log_file_gets_a_line_every_n_steps_across_epochs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="segssl.utils.progress")
    fit(tmp_path, StepProgressBar(refresh_rate=1, line_every=2, terminal=False))
    lines = [r.getMessage() for r in caplog.records if r.name == "segssl.utils.progress"]
    assert lines[0] == f"Run folder: {tmp_path / 'run'}"  # before any step or validation
    steps = [
        re.match(r"step (\d+)/7 \(\d+%\) \| [\d.e-]+ s/step \| \d+:\d\d left", x) for x in lines[1:]
    ]
    assert all(steps), lines
    assert [int(m.group(1)) for m in steps] == [2, 4, 6, 7]  # the run's steps, not an epoch's
    assert "val/dice 0.53" in lines[2]  # step 4: the validation at step 3 is shown
    assert all("v_num" not in x and "Epoch" not in x for x in lines)


def test_terminal_bar_counts_global_steps_out_of_max_steps(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    bar = StepProgressBar(refresh_rate=1, terminal=True)
    fit(tmp_path, bar)
    assert bar.train_progress_bar.total == 7 and bar.train_progress_bar.n == 7
    final = re.split(r"[\r\n]", out.getvalue())
    shown = [x for x in final if x.startswith("Training")]
    assert shown and "7/7 100%" in shown[-1] and "left" in shown[-1], shown[-3:]
    assert "val/dice=" not in shown[-1] and "val/dice 0.56" in shown[-1]
    assert not [x for x in final if x.startswith("Epoch")]


def test_config_points_at_the_step_bar_and_keeps_the_refresh_rate():
    from omegaconf import OmegaConf

    node = OmegaConf.load(REPO / "conf" / "callbacks" / "default.yaml").progress_bar
    assert node._target_ == "segssl.utils.progress.StepProgressBar"
    assert node.refresh_rate == 10


def test_a_resumed_run_counts_from_its_step(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="segssl.utils.progress")
    first = fit(tmp_path, StepProgressBar(refresh_rate=1, terminal=False), max_steps=4)
    first.save_checkpoint(tmp_path / "step4.ckpt")
    caplog.clear()
    bar = StepProgressBar(refresh_rate=1, line_every=1, terminal=False)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 2)))
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path / "run"), max_steps=7, max_epochs=-1, val_check_interval=3,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, callbacks=[bar], logger=False,
        enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(Tiny(), data, data, ckpt_path=tmp_path / "step4.ckpt")
    lines = [r.getMessage() for r in caplog.records if r.msg == "%s"]
    assert [x.split(" (")[0] for x in lines] == ["step 5/7", "step 6/7", "step 7/7"]
    assert bar.train_progress_bar.initial == 4  # time per step is measured from the resume


# ---------------------------------------------------------------------------------------------
# known harmless noise (segssl/utils/quiet.py)


def noisy_fit(tmp_path: Path, silence: bool) -> list[str]:
    """A fit that triggers every known message: a logger (tips), 3 batches an epoch under
    log_every_n_steps=50, a checkpoint folder that is not empty (as on a resume), and
    Lightning's _pytree helper; returns the warnings and Lightning's info lines."""
    import warnings

    from pytorch_lightning.callbacks import ModelCheckpoint

    from segssl.utils.loggers import AppendingCSVLogger
    from segssl.utils.quiet import silence_known_noise

    (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp_path / "checkpoints" / "latest.ckpt").write_bytes(b"")
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Catch()
    lightning_log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    lightning_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if silence:
                silence_known_noise()
            data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 2)))
            pl.Trainer(
                default_root_dir=str(tmp_path),
                max_steps=2,
                logger=AppendingCSVLogger(tmp_path),
                log_every_n_steps=50,
                callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints")],
                enable_progress_bar=False,
                enable_model_summary=False,
            ).fit(Tiny(), data)
    finally:
        lightning_log.removeHandler(handler)
    return [str(w.message) for w in caught] + seen


def test_known_noise_is_silenced_and_the_rest_is_kept(tmp_path):
    import warnings

    from segssl.utils import quiet
    from segssl.utils.quiet import silence_known_noise

    def unsilence() -> None:  # the log filter is process-wide: a command run earlier added it
        for name in quiet.LIGHTNING_LOGGERS:
            logging.getLogger(name).removeFilter(quiet._FILTER)

    patterns = ["LeafSpec", "smaller than the logging interval", "is not empty", "💡 Tip"]
    unsilence()
    before = noisy_fit(tmp_path / "before", silence=False)
    assert all(any(p in m for m in before) for p in patterns), before  # they do appear
    try:
        after = noisy_fit(tmp_path / "after", silence=True)
    finally:
        unsilence()
    assert not [m for m in after if any(p in m for p in patterns)], after
    with warnings.catch_warnings(record=True) as caught:  # an unknown warning still shows
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn("something new", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something new"]


def test_a_log_line_during_training_is_printed_above_the_bar_not_glued_to_it(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    console = logging.StreamHandler(out)  # Hydra's console handler writes to stdout
    logging.root.addHandler(console)
    said = logging.getLogger("segssl.test_progress")
    said.setLevel(logging.INFO)

    class Says(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            said.info("validation done at %d", trainer.global_step)

    try:
        bar = StepProgressBar(refresh_rate=1, terminal=True)
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 2)))
        pl.Trainer(
            default_root_dir=str(tmp_path), max_steps=4, max_epochs=-1, val_check_interval=3,
            check_val_every_n_epoch=None, num_sanity_val_steps=0, callbacks=[bar, Says()],
            logger=False, enable_checkpointing=False, enable_model_summary=False,
        ).fit(Tiny(), data, data)  # fmt: skip
    finally:
        logging.root.removeHandler(console)
    lines = re.split(r"[\r\n]", out.getvalue())
    assert "validation done at 3" in lines  # a line of its own
    assert logging.root.handlers.count(console) == 0 and bar._redirect is None  # restored
