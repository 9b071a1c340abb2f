"""Whether the process that left a file behind (a run lock, a half-written temporary) still
runs on this host: the one check both ``runs/lock`` and ``atomic`` trust before they take over or
remove what that process owns."""

from __future__ import annotations

import os
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux; None elsewhere or when it is gone), which
    tells a reused pid from the process that wrote it down."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def is_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (another user's counts); with ``started`` (its
    ``start_time`` when it was recorded), a pid now reused by a new process counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user: alive
    if started is not None:
        now = start_time(pid)
        if now is not None and now != started:
            return False
    return True
