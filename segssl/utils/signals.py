"""Stop a run within seconds on SIGTERM (``kill``, a SLURM pre-emption) or Ctrl-C (SIGINT).

Lightning's own SIGTERM handling only sets a flag that its loops read between batches, so one
long sliding-window volume delays the stop by minutes, and it then exits with status 0. Here:

- Outside a training step (validation, test, set-up, the view cache) the handler raises
  ``RunInterrupted`` at once, in the main thread, at the next Python instruction.
- During a training step (``segssl.utils.stop_on_signal`` marks it with ``defer_stop``) the
  signal is only recorded: the step and its optimiser update finish, a resumable checkpoint is
  written at that batch boundary, and then the run stops. A second signal stops at once,
  without that checkpoint.
- A signal that lands inside a ``__del__`` or weakref callback, where Python swallows
  exceptions, is sent again until it is raised in the main code.
- ``RunInterrupted`` is a ``SystemExit`` with status 128 + signal number (143 for SIGTERM, 130
  for Ctrl-C), so neither Hydra nor Lightning reports it as a crash, and nothing after the
  interrupted stage runs (no ``results.json``). Every file is written atomically, so the stop
  leaves no half-written file.

Under DDP every rank gets the signal (SLURM signals all tasks; Lightning's launcher forwards
SIGTERM to its children); the ranks agree at the batch boundary so that they all stop at the
same step, and only rank 0 writes the checkpoint. A stop during validation writes none under
DDP (a rank may be inside a collective): the newest periodic checkpoint is resumed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(SystemExit):
    """A run stopped by a signal; the process exits with status 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


class _StopState:
    """What the handler knows: the signal received (if any) and whether a training step that
    must not be cut in the middle is running."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False


_state = _StopState()


def _handle(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _state.deferring and _state.signum is None:
        _state.signum = signum
        log.warning(
            "%s received: stopping after this training step, once a resumable checkpoint is "
            "written (send it again to stop at once, without one)",
            name,
        )
        return
    _state.signum = signum
    _state.deferring = False
    log.warning("%s received: stopping now", name)
    raise RunInterrupted(signum)


_previous_unraisablehook = sys.unraisablehook


def _redeliver_swallowed(unraisable: Any) -> None:
    """A signal that lands while a ``__del__`` or weakref callback runs (frequent in torch
    code) raises there, and Python swallows that exception: send the signal again, from a
    thread, so that it is raised once the callback is over."""
    if isinstance(unraisable.exc_value, RunInterrupted):
        signum = unraisable.exc_value.signum
        threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
        return
    _previous_unraisablehook(unraisable)


def install_stop_handlers() -> None:
    """Handle SIGTERM and SIGINT as described above. Idempotent; a no-op outside the main thread
    (Python only delivers signals there). Lightning wraps the SIGTERM handler while it runs and
    calls this one after its own."""
    global _previous_unraisablehook
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not _handle:
            signal.signal(signum, _handle)
    if sys.unraisablehook is not _redeliver_swallowed:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _redeliver_swallowed


def stop_requested() -> int | None:
    """The signal received while stopping was deferred, else None."""
    return _state.signum


def defer_stop(deferring: bool) -> None:
    """While ``deferring``, a first stop signal is recorded (see ``stop_requested``), not
    raised: for work that must not be cut in the middle, such as a training step."""
    _state.deferring = deferring


def reset() -> None:
    """Forget a recorded signal (between runs in one process, e.g. tests or a multirun)."""
    _state.signum = None
    _state.deferring = False
