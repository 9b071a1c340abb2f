"""The one place files are written atomically: a temporary file (or folder) beside the target,
flushed, then renamed over it. A reader never sees half a file, a failure leaves no temporary
behind, and a full disk or a read-only folder is said in words that name the file."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from segssl.utils.processes import is_alive

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class WriteError(OSError):
    """A write that failed for a reason the user must act on (disk full, read-only output)."""

    def __str__(self) -> str:
        # the sentence alone: it already names the file (OSError would append it again)
        return self.strerror or super().__str__()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _writer_tag() -> str:
    """Host and pid of this writer, so a later run can tell a dead writer's leftovers from a
    live writer's file (on a folder shared between machines too)."""
    host = re.sub(r"[^A-Za-z0-9]", "-", socket.gethostname())[:40] or "host"
    return f"{host}_{os.getpid()}"


def temporary_sibling(target: Path, suffix: str = ".tmp") -> Path:
    """A hidden name beside ``target`` on the same file system (so the rename is atomic),
    tagged with the writer's host and pid (see ``remove_stale_temporaries``)."""
    return target.with_name(f".{target.name}.{_writer_tag()}_{uuid.uuid4().hex[:8]}{suffix}")


# a temporary file of ``atomic_path`` (staging folders are never removed: they may hold the
# only copy of data during a swap)
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)_(?P<pid>\d+)_[0-9a-f]{8}(\.[^./]+)*\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files in ``folder`` left by writers that died (killed mid-write) on
    this host; another host's or a live process's are kept. Returns those removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = _writer_tag().rsplit("_", 1)[0]
    removed = []
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if not match or match["host"] != host or is_alive(int(match["pid"])) or path.is_dir():
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def explain(err: BaseException, target: Path) -> BaseException:
    """``err`` in words when it is a disk-full / read-only / permission failure, else itself.
    Some writers (torch.save's zip writer, h5py) bury the errno in their own message."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code not in _REASONS:
        for candidate in _REASONS:
            if os.strerror(candidate) in text or f"errno = {candidate}" in text.lower():
                code = candidate
                break
        else:
            if "unexpected pos" in text or "file write failed" in text:
                code = errno.ENOSPC  # torch's zip writer on a full disk
    if code in _REASONS:
        error = WriteError(code, f"{_REASONS[code]} while writing {target}")
        error.filename = str(target)
        return error
    return err


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (h5py, torch.save, savefig);
    on success it replaces ``target`` with the user's normal permissions, on failure it is
    removed and a disk-full / read-only error is explained."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise explain(err, target) from err
    tmp = temporary_sibling(target, suffix)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        explained = explain(err, target)
        if explained is not err:
            raise explained from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(target, mode)`` that only replaces ``target`` once the block succeeds."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not 'w' or 'wb'")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_open(target, "w") as handle:
        handle.write(text)
    return Path(target)


def write_with(target: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move its file into place atomically."""
    with atomic_path(target, suffix=Path(target).suffix + ".tmp") as tmp:
        writer(tmp)
    return Path(target)


def move(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename ``source`` to ``target`` in one step (same file system; a file already at
    ``target`` is replaced), a read-only or full file system said in words naming ``target``."""
    target = Path(target)
    try:
        os.replace(source, target)
    except OSError as err:
        explained = explain(err, target)
        if explained is not err:
            raise explained from err
        raise
    return target


@contextmanager
def staged_folder(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a whole folder beside ``target`` and move it into place only when complete; an
    existing ``target`` is kept unless ``replace`` (then swapped out and removed)."""
    target = Path(target)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(target, ".staging")
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            old = temporary_sibling(target, ".old")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        explained = explain(err, target)
        if explained is not err:
            raise explained from err
        raise
