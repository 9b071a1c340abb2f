"""Resume after SIGKILL: same folder, same global step, same W&B run, continuous metrics."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

RESUMABLE = [
    *(o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))),
    "trainer.max_steps=40",
    "trainer.val_check_interval=10",
    "callbacks.latest_checkpoint.every_n_train_steps=3",
    "logger=wandb",
    "method=mean_teacher",  # EMA state must survive too
]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "segssl", "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def metrics_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_run(tmp_path):
    process = start(RESUMABLE, tmp_path)
    runs = tmp_path / "outputs" / "train" / "runs"
    deadline = time.time() + 240
    latest = None
    while time.time() < deadline:
        found = list(runs.glob("*/checkpoints/latest.ckpt"))
        if found and torch.load(found[0], weights_only=False)["global_step"] >= 12:
            latest = found[0]
            break
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.5)
    assert latest is not None, "no checkpoint within the time limit"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = latest.parent.parent
    assert not (run_dir / "results.json").exists()
    killed_step = torch.load(latest, weights_only=False)["global_step"]
    steps_before = metrics_steps(run_dir)
    wandb_id = json.loads((run_dir / ".segssl_run.json").read_text())["wandb_id"]

    resumed = start([f"resume={run_dir}"], tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert list(runs.iterdir()) == [run_dir]  # no new run folder
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # the original snapshot is kept
    assert list((run_dir / ".hydra").glob("resume_*/config.yaml"))
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["models"]) == {"student", "teacher"}
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 40
    steps = metrics_steps(run_dir)
    assert steps[: len(steps_before)] == steps_before  # nothing of the first run lost
    after = [s for s in steps[len(steps_before) :]]
    assert after and min(after) >= killed_step - 1 and max(after) >= 38
    logged = sorted(set(steps))
    assert all(b - a <= 1 for a, b in zip(logged, logged[1:], strict=False))  # no gap
    assert json.loads((run_dir / ".segssl_run.json").read_text())["wandb_id"] == wandb_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))) >= 1


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "segssl", "train", f"resume={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert f"resume={tmp_path}: not a segssl run folder" in run.stderr
