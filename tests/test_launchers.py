"""Multirun through the submitit local launcher (the cluster set-up, run on this machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY


@pytest.mark.slow
def test_two_job_multirun_with_the_local_launcher(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "segssl",
            "train",
            "-m",
            "hydra/launcher=local",
            *TINY,
            "logger=none",
            "trainer.max_steps=2",
            "seed=0,1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = sorted((tmp_path / "outputs" / "train" / "multirun").glob("*/*/results.json"))
    assert [p.parent.name for p in results] == ["0", "1"]
    seeds = {json.loads(p.read_text())["config"]["seed"] for p in results}
    assert seeds == {0, 1}
    assert list((tmp_path / "outputs" / "train" / "multirun").glob("*/.submitit"))
