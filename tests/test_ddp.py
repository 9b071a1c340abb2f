"""Two-process DDP on the CPU (gloo): sharded streams, gathered evaluation, one results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "segssl",
            "train",
            *TINY,
            "data.synthetic.num_train_patients=6",
            "data.labeled=2",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=3",
            "method=cps",
            "+callbacks.record._target_=tests.ddp_probe.RecordCases",
            f"+callbacks.record.path={probe}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world"] == 2 for s in seen)
    assert set(seen[0]["cases"]).isdisjoint(seen[1]["cases"])  # each rank its own shard
    results = list((tmp_path / "outputs").rglob("results.json"))
    assert len(results) == 1
    summary = json.loads(results[0].read_text())
    # 2 test patients x 2 frames, gathered from both ranks, each volume once
    assert summary["models"]["ensemble"]["num_cases"] == 4
    assert len(list((tmp_path / "outputs").rglob("per_case.csv"))) == 1
