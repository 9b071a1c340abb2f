"""The stale-lock takeover has exactly one winner, also with many contenders (issue 22, item 6).

Taking over by "unlink the stale lock, then create mine" lets a slow contender unlink the lock
that a faster one has just created, and both believe they own the run folder."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segssl.runs.lock import LOCK_NAME, RunFolderBusy, RunLock, read_holder

CONTENDERS = 8
TRIALS = 5


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_stale_lock(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = {"pid": dead_pid(), "host": socket.gethostname(), "started": "2024-01-01 10:00:00"}
    (run_dir / LOCK_NAME).write_text(json.dumps(holder))


def contend(run_dir: str, flock: bool, start, done, results) -> None:
    """Try once to take the lock; the winner keeps living (and holding it) until every
    contender has tried, else a late one would rightly take over a dead winner's lock."""
    from segssl.runs import lock as run_lock

    # a busy machine: checking whether the holder lives takes a while (as /proc reads and
    # scheduling do under load), which widens any window between that check and the takeover
    check = run_lock._alive
    random.seed(os.getpid())

    def slow_alive(holder: run_lock.Holder) -> bool:
        time.sleep(random.uniform(0, 0.01))
        return check(holder)

    run_lock._alive = slow_alive
    if not flock:  # a file system without flock: the takeover by rename
        run_lock._guard = lambda run_dir: None
    start.wait()
    try:
        RunLock(run_dir).acquire()
        results.put(("won", os.getpid()))
    except RunFolderBusy:
        results.put(("busy", os.getpid()))
    except Exception as err:  # noqa: BLE001 - reported to the test, which fails on it
        results.put((f"error: {err!r}", os.getpid()))
    done.wait()


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-flock"])
def test_eight_processes_racing_for_a_stale_lock_have_one_winner(tmp_path, flock, trial):
    context = multiprocessing.get_context("fork")
    run_dir = tmp_path / "run"
    write_stale_lock(run_dir)
    start, done = context.Barrier(CONTENDERS), context.Barrier(CONTENDERS + 1)
    results = context.Queue()
    processes = [
        context.Process(target=contend, args=(str(run_dir), flock, start, done, results))
        for _ in range(CONTENDERS)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=60) for _ in processes]
        holder = read_holder(run_dir)  # read while every contender still lives
    finally:
        done.wait(timeout=60)
        for process in processes:
            process.join(timeout=60)
    winners = [pid for outcome, pid in outcomes if outcome == "won"]
    assert len(winners) == 1, outcomes
    assert sorted(o for o, _ in outcomes) == ["busy"] * (CONTENDERS - 1) + ["won"], outcomes
    assert holder is not None and holder.pid == winners[0]
    # nothing of the takeover is left beside the lock
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
