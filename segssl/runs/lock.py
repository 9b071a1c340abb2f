"""One owner per run folder: a lock file naming the process that writes into the folder.

The lock holds the pid, host and start time of its process. A second run into the same folder
is refused while that process lives; a lock left by a process that died (SIGKILL, power loss)
on this host is stale and taken over. A lock from another host cannot be checked, so it is
refused with the path to delete once that run is known to be gone."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segssl.utils.processes import is_alive, start_time

try:
    import fcntl
except ImportError:  # not on Windows: takeovers fall back to _take_over_by_rename
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".segssl_lock"

# lock paths this process holds, with how many times (the CLI and the task both take it)
_HELD: dict[Path, int] = {}


class RunFolderError(RuntimeError):
    """A run folder that this command must not write into (in use, finished or unfinished)."""


class RunFolderBusy(RunFolderError):
    """Another live process owns the run folder."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str
    proc_start: str | None = None

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"


def _alive(holder: Holder) -> bool:
    """Whether the lock's process still runs (its pid, not reused since it took the lock)."""
    return is_alive(holder.pid, holder.proc_start)


def _this_process() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "proc_start": start_time(os.getpid()),
    }


def read_holder(run_dir: str | os.PathLike) -> Holder | None:
    """The process named in ``run_dir``'s lock file, or None when there is none."""
    path = Path(run_dir) / LOCK_NAME
    try:
        data = json.loads(path.read_text())
        return Holder(
            int(data["pid"]), str(data["host"]), str(data["started"]), data.get("proc_start")
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunFolderBusy(
            f"{run_dir}: unreadable lock file {path} ({err}); delete it if no segssl run is "
            f"using this folder"
        ) from err


def live_holder(run_dir: str | os.PathLike) -> Holder | None:
    """The holder of ``run_dir``'s lock if it may still be running, else None (no or stale
    lock). A lock of this very process counts as not held by someone else."""
    holder = read_holder(run_dir)
    if holder is None:
        return None
    if holder.host == socket.gethostname():
        if holder.pid == os.getpid() or not _alive(holder):
            return None
    return holder


def busy_message(run_dir: Path, holder: Holder) -> str:
    text = f"{run_dir} is in use by another segssl run: {holder.describe()}."
    if holder.host != socket.gethostname():
        text += (
            f" It runs on another host, so segssl cannot tell whether it is still alive; if it "
            f"is not, delete {run_dir / LOCK_NAME}."
        )
    return text + " Wait for it to end, or omit hydra.run.dir to start a new run folder."


def _create(path: Path, content: str) -> bool:
    """Create ``path`` holding ``content`` only if it does not exist (False if it does)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content)
    try:
        os.link(tmp, path)  # atomic create-with-content: never a half-written lock
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _guard(run_dir: Path) -> int | None:
    """An open descriptor of ``run_dir`` holding an exclusive ``flock``: the critical section of
    a stale-lock takeover (no file is added to the folder; closing the descriptor ends it).
    None where the file system or platform has no ``flock``."""
    if fcntl is None:
        return None
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        return None
    return fd


def _take_over(run_dir: Path, path: Path, content: str) -> bool:
    """Replace a stale lock by ours; True if ours is now the lock.

    Unlinking a stale lock and then creating one is racy: a contender that judged the lock
    stale a moment ago can unlink the lock a faster one has just created, and both own the
    folder. So a takeover happens inside a critical section (``_guard``), where the lock is
    judged again: nobody else removes a lock while it is held (a live owner removes only its
    own lock, which is never stale), so the stale lock unlinked is the one just judged. The
    create stays exclusive, so a contender creating after the unlink wins instead of us."""
    fd = _guard(run_dir)
    if fd is None:
        return _take_over_by_rename(run_dir, path, content)
    try:
        holder = live_holder(run_dir)
        if holder is not None:
            raise RunFolderBusy(busy_message(run_dir, holder))
        path.unlink(missing_ok=True)  # stale, judged inside the critical section
        return _create(path, content)
    finally:
        os.close(fd)


def _take_over_by_rename(run_dir: Path, path: Path, content: str) -> bool:
    """The takeover where ``flock`` is missing: judge the lock's text stale, move the lock
    aside under a name of our own (atomic: of several contenders one gets it), and remove it
    only if what we moved is the text judged stale; a lock created in between and moved by
    mistake is put back at once (``os.link`` fails rather than replace a lock created
    meanwhile). Narrower than ``_guard`` but not airtight: a contender creating a lock in the
    instant between a mistaken move and its return can meet a second owner."""
    try:
        stale_text = path.read_text()
    except FileNotFoundError:
        return _create(path, content)
    if not _stale_text(stale_text):
        holder = live_holder(run_dir)
        if holder is not None:
            raise RunFolderBusy(busy_message(run_dir, holder))
        return False
    aside = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another contender moved it first
    try:
        if aside.read_text() == stale_text:
            return _create(path, content)
        try:
            os.link(aside, path)  # a lock created after the judgement: put it back
        except FileExistsError:
            pass
        except OSError:  # no hard links either
            if not path.exists():
                os.replace(aside, path)
        return False
    finally:
        aside.unlink(missing_ok=True)


def _stale_text(text: str) -> bool:
    """Whether a lock file's text names a process of this host that is gone (an unreadable
    text, perhaps a lock being written, is not stale)."""
    try:
        data = json.loads(text)
        holder = Holder(
            int(data["pid"]), str(data["host"]), str(data["started"]), data.get("proc_start")
        )
    except (ValueError, KeyError, TypeError):
        return False
    return holder.host == socket.gethostname() and holder.pid != os.getpid() and not _alive(holder)


class RunLock:
    """``with RunLock(run_dir):`` owns ``run_dir`` for the block; re-entrant in one process."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / LOCK_NAME

    def acquire(self) -> RunLock:
        """Take the lock; a stale one (its process is gone) is taken over by exactly one of any
        number of contenders, the others are refused naming the winner."""
        if self.path in _HELD:
            _HELD[self.path] += 1
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        content = json.dumps(_this_process(), indent=2)
        for _ in range(5):
            if _create(self.path, content):
                _HELD[self.path] = 1
                return self
            holder = live_holder(self.run_dir)
            if holder is not None:
                raise RunFolderBusy(busy_message(self.run_dir, holder))
            if _take_over(self.run_dir, self.path, content):
                _HELD[self.path] = 1
                return self
        raise RunFolderBusy(f"{self.run_dir}: could not take the lock {self.path}")

    def release(self) -> None:
        count = _HELD.get(self.path, 0) - 1
        if count > 0:
            _HELD[self.path] = count
            return
        _HELD.pop(self.path, None)
        holder = read_holder(self.run_dir) if self.path.exists() else None
        if holder is not None and holder.pid == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def refuse_reuse(run_dir: str | os.PathLike, command: str = "train") -> None:
    """Refuse to start ``command`` (a new ``train``, a ``test`` or ``predict``) in ``run_dir``
    when it is in use or already holds a run or a command's output (results, ``.hydra/`` or
    checkpoints): what it would write there would overwrite or mix with them."""
    run_dir = Path(run_dir).resolve()
    holder = live_holder(run_dir)
    if holder is not None:
        raise RunFolderBusy(busy_message(run_dir, holder))
    finished = (run_dir / "results.json").is_file()
    used = (run_dir / ".hydra" / "config.yaml").is_file()
    checkpoints = any((run_dir / "checkpoints").glob("*.ckpt"))
    if command != "train" and (finished or used or checkpoints):
        held = "results.json" if finished else ".hydra/config.yaml" if used else "checkpoints"
        raise RunFolderError(
            f"{run_dir} holds a run or a command's output ({held}); `segssl {command}` writes "
            f"its own .hydra/ and results into its run folder and would overwrite them. Omit "
            f"hydra.run.dir (a new folder under outputs/{command}/runs/) or give a new folder."
        )
    if finished:
        raise RunFolderError(
            f"{run_dir} holds a finished run (results.json); a new run would mix with it. Omit "
            f"hydra.run.dir to start a new run folder, or extend this run with "
            f"`train resume={run_dir} trainer.max_steps=N` (N larger than its own)."
        )
    if used or checkpoints:
        raise RunFolderError(
            f"{run_dir} holds an unfinished run; continue it with `train resume={run_dir}`, or "
            f"omit hydra.run.dir to start a new run folder."
        )


def refuse_sweep_reuse(sweep_dir: str | os.PathLike, command: str = "train") -> None:
    """Refuse a sweep into ``sweep_dir`` when one of its job folders (``0``, ``1``, ...) is in
    use or holds a run: the sweep's jobs are numbered from 0 and would write into them."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        return
    for job in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit() and p.is_dir()):
        try:
            refuse_reuse(job, command)
        except RunFolderError as err:
            raise type(err)(
                f"hydra.sweep.dir={sweep_dir}: its job folder {job.name} is taken, and a sweep "
                f"numbers its jobs 0, 1, ... in it: {err} For a sweep, omit hydra.sweep.dir to "
                f"start a new sweep folder."
            ) from None


# arguments after which Hydra prints something and runs no task
_NO_TASK = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion")


def explicit_run_dir(argv: list[str]) -> Path | None:
    """The folder a single run was told to write into (``hydra.run.dir=``), or None: no such
    override, a multirun, a command that runs no task, or a value only Hydra can resolve."""
    if any(a in ("-m", "--multirun") or a.split("=", 1)[0] in _NO_TASK for a in argv):
        return None
    values = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("hydra.run.dir=")]
    if not values or "${" in values[-1]:
        return None
    return Path(values[-1].strip("'\"")).expanduser().resolve()
