"""SIGTERM and Ctrl-C stop a run within seconds: a training step finishes and a resumable
checkpoint is written; validation, test and inference stop at once; the exit status says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from segssl.utils import signals
from segssl.utils.signals import RunInterrupted, install_stop_handlers
from tests.conftest import TINY, start_segssl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_handlers():
    """Each test starts without a recorded signal and leaves the process's handlers as found."""
    saved = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    signals.reset()
    yield
    signals.reset()
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class SignalAt(pl.Callback):
    """Test helper: the process signals itself in the middle of a stage, as ``kill`` would."""

    def __init__(self, hook: str, step: int = 0, signum: int = signal.SIGTERM) -> None:
        self.hook, self.step, self.signum, self.sent_at = hook, step, signum, None
        setattr(self, hook, self._send)

    def _send(self, trainer: pl.Trainer, *args) -> None:
        if self.sent_at is None and trainer.global_step >= self.step:
            self.sent_at = trainer.global_step
            os.kill(os.getpid(), self.signum)


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def no_temporaries(run_dir: Path) -> bool:
    return not [p for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".staging"))]


def test_a_first_signal_in_a_training_step_is_deferred_a_second_is_not():
    install_stop_handlers()
    signals.defer_stop(True)
    os.kill(os.getpid(), signal.SIGTERM)  # recorded only
    assert signals.stop_requested() == signal.SIGTERM
    with pytest.raises(RunInterrupted) as raised:
        os.kill(os.getpid(), signal.SIGINT)
    assert raised.value.code == 128 + signal.SIGINT


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_step_ends_that_step_then_checkpoints_and_stops(run_task, tmp_path, signum):
    # sent just before the optimiser update of the second step (global_step 1)
    hook = ["+callbacks.sig._target_=tests.test_signals.SignalAt"]
    args = [*hook, "+callbacks.sig.hook=on_before_optimizer_step", "+callbacks.sig.step=1"]
    args.append(f"+callbacks.sig.signum={int(signum)}")
    with pytest.raises(RunInterrupted) as raised:
        run_task([*TINY, *args, "trainer.max_steps=20", "trainer.val_check_interval=10"])
    assert raised.value.code == 128 + signum  # 143 / 130
    run_dir = tmp_path / "run"
    # the update of the step in flight was made, then the run stopped: step 2 is saved
    assert checkpoint_step(run_dir / "checkpoints" / "latest.ckpt") == 2
    assert not (run_dir / "results.json").exists()
    assert no_temporaries(run_dir)


def test_a_signal_during_validation_stops_at_once_with_a_resumable_checkpoint(run_task, tmp_path):
    args = ["+callbacks.sig._target_=tests.test_signals.SignalAt"]
    args.append("+callbacks.sig.hook=on_validation_batch_start")
    with pytest.raises(RunInterrupted) as raised:
        run_task([*TINY, *args, "trainer.max_steps=20", "trainer.val_check_interval=2"])
    assert raised.value.code == 143
    run_dir = tmp_path / "run"
    # stopped in the first validation, at step 2, before any other validation or step
    assert checkpoint_step(run_dir / "checkpoints" / "latest.ckpt") == 2
    assert not list((run_dir / "checkpoints").glob("best_*"))  # that validation never finished
    assert not (run_dir / "results.json").exists()
    assert no_temporaries(run_dir)


def test_a_signal_during_the_final_test_writes_no_results(run_task, tmp_path):
    args = ["+callbacks.sig._target_=tests.test_signals.SignalAt"]
    args.append("+callbacks.sig.hook=on_test_batch_start")
    with pytest.raises(RunInterrupted) as raised:
        run_task([*TINY, *args])
    assert raised.value.code == 143
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "per_case.csv").exists()


def test_sliding_window_inference_stops_within_a_second():
    """A long 3-D test volume (here 27,000 windows, about a minute of work) is cut at
    the next window, not after the volume as Lightning's own SIGTERM flag would."""
    from segssl.evaluation.inference import predict_volume_3d
    from segssl.models.vnet import VNet

    install_stop_handlers()
    net = VNet(1, 2, features=2).eval()
    volume = torch.rand(48, 48, 40)
    sent: list[float] = []

    def send() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(1.0, send)
    timer.start()
    with pytest.raises(RunInterrupted):
        predict_volume_3d(lambda x: torch.softmax(net(x), 1), volume, (16, 16, 16), stride=1)
    stopped = time.monotonic() - sent[0]
    timer.join()
    assert stopped < 5, f"stopped {stopped:.1f} s after the signal"


RUN = [
    *(o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))),
    "trainer.max_steps=30",
    "trainer.val_check_interval=10",
    "callbacks.latest_checkpoint.every_n_train_steps=5",
]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return start_segssl(["train", *args], cwd)


@pytest.mark.slow
def test_sigterm_then_resume_continues_from_the_interrupted_step(tmp_path):
    process = start(RUN, tmp_path)
    runs = tmp_path / "outputs" / "train" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline:
        found = list(runs.glob("*/checkpoints/latest.ckpt"))
        if found and (periodic := checkpoint_step(found[0])) >= 5:
            break
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("no checkpoint within the time limit")
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    took = time.monotonic() - sent
    assert process.returncode == 143, output[-3000:]
    stopped = re.search(r"Stopped by SIGTERM after a training step, at step (\d+)", output)
    assert stopped, output[-3000:]
    run_dir = found[0].parent.parent
    step = int(stopped[1])
    # the step in flight when the signal came, not the next periodic checkpoint or the end
    assert periodic < step <= periodic + 6, (periodic, step)
    assert checkpoint_step(run_dir / "checkpoints" / "latest.ckpt") == step
    # a loose bound (exit includes interpreter teardown on a shared 2-core machine); the rest
    # of this run would take minutes
    assert took < 60, f"took {took:.1f} s to stop"
    assert f"resume={run_dir}" in output
    assert not (run_dir / "results.json").exists()
    assert no_temporaries(run_dir)

    resumed = start([f"resume={run_dir}"], tmp_path)
    output = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 30
    assert (run_dir / "results.json").is_file()
    print(f"stopped {took:.1f} s after SIGTERM, at step {step} (periodic checkpoint {periodic})")
