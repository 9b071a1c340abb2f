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


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(holder: Holder) -> bool:
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user: alive
    if holder.proc_start is not None:
        now = _proc_start(holder.pid)
        if now is not None and now != holder.proc_start:
            return False  # the pid was reused by a new process
    return True


def _this_process() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "proc_start": _proc_start(os.getpid()),
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


class RunLock:
    """``with RunLock(run_dir):`` owns ``run_dir`` for the block; re-entrant in one process."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / LOCK_NAME

    def acquire(self) -> RunLock:
        if self.path in _HELD:
            _HELD[self.path] += 1
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        content = json.dumps(_this_process(), indent=2)
        for _ in range(3):
            if _create(self.path, content):
                _HELD[self.path] = 1
                return self
            holder = live_holder(self.run_dir)
            if holder is not None:
                raise RunFolderBusy(busy_message(self.run_dir, holder))
            self.path.unlink(missing_ok=True)  # stale: its process is gone
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


def refuse_reuse(run_dir: str | os.PathLike) -> None:
    """Refuse to start a new run in ``run_dir`` when it is in use or already holds a run."""
    run_dir = Path(run_dir).resolve()
    holder = live_holder(run_dir)
    if holder is not None:
        raise RunFolderBusy(busy_message(run_dir, holder))
    if (run_dir / "results.json").is_file():
        raise RunFolderError(
            f"{run_dir} holds a finished run (results.json); a new run would mix with it. Omit "
            f"hydra.run.dir to start a new run folder, or extend this run with "
            f"`train resume={run_dir} trainer.max_steps=N` (N larger than its own)."
        )
    if (run_dir / ".hydra" / "config.yaml").is_file() or any(
        (run_dir / "checkpoints").glob("*.ckpt")
    ):
        raise RunFolderError(
            f"{run_dir} holds an unfinished run; continue it with `train resume={run_dir}`, or "
            f"omit hydra.run.dir to start a new run folder."
        )


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
