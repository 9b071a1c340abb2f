"""The one process-alive check that the run lock and the atomic writer's clean-up both trust."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from segssl.runs import lock as run_lock
from segssl.utils import atomic
from segssl.utils.processes import is_alive, start_time


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_a_dead_and_a_reused_pid() -> None:
    me = os.getpid()
    assert is_alive(me) and is_alive(me, start_time(me))
    assert not is_alive(dead_pid())
    if start_time(me) is not None:  # Linux: a pid whose start time changed was reused
        assert not is_alive(me, started="0")


def test_lock_and_temporaries_ask_the_same_question(tmp_path: Path) -> None:
    """A dead writer's temporary is removed and a dead holder's lock is stale, by one check."""
    pid = dead_pid()
    holder = run_lock.Holder(pid, "here", "then")
    assert not run_lock._alive(holder)
    host = atomic._writer_tag().rsplit("_", 1)[0]
    left = tmp_path / f".model.ckpt.{host}_{pid}_0123abcd.tmp"
    left.write_text("half")
    assert atomic.remove_stale_temporaries(tmp_path) == [left]
