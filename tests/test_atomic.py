"""Atomic writes: a full disk or a read-only output is said in words naming the file, the old
file is kept, and no temporary is left behind; a dead writer's temporaries are cleaned up."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from segssl.utils import atomic
from segssl.utils.atomic import (
    WriteError,
    atomic_open,
    remove_stale_temporaries,
    temporary_sibling,
    write_text,
    write_with,
)

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """Every temporary file is a link to /dev/full, where each write fails with ENOSPC: the
    writers (torch's zip writer, HDF5, Python's io) fail as they do on a full disk."""
    links = []

    def on_full_device(target: Path, suffix: str = ".tmp") -> Path:
        link = target.with_name(f".{target.name}.full{len(links)}{suffix}")
        link.symlink_to("/dev/full")
        links.append(link)
        return link

    monkeypatch.setattr(atomic, "temporary_sibling", on_full_device)
    return links


def write_torch(target: Path) -> None:
    write_with(target, lambda tmp: torch.save({"weights": torch.zeros(1000)}, tmp))


def write_h5(target: Path) -> None:
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=np.zeros((64, 64), np.float32))

    write_with(target, write)


def write_json(target: Path) -> None:
    write_text(target, '{"mean": 0.5}' * 1000)


def write_csv(target: Path) -> None:
    with atomic_open(target, "w") as handle:
        handle.write("case,dice\n" * 1000)


@pytest.mark.parametrize(
    ("writer", "name"),
    [
        (write_torch, "last.ckpt"),
        (write_h5, "views.h5"),
        (write_json, "results.json"),
        (write_csv, "per_case.csv"),
    ],
)
def test_a_full_disk_is_said_in_words_and_the_old_file_is_kept(tmp_path, full_disk, writer, name):
    target = tmp_path / name
    target.write_bytes(b"the previous version")
    with pytest.raises(WriteError) as raised:
        writer(target)
    assert str(raised.value) == f"no space left on device while writing {target}"
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(target)
    assert target.read_bytes() == b"the previous version"
    assert full_disk and not any(link.is_symlink() for link in full_disk)  # temporaries removed
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert Path("/dev/full").is_char_device()


def test_torchs_buried_errno_is_recognised():
    """torch.save on a full device says only 'enforce fail ... unexpected pos'."""
    with pytest.raises(RuntimeError) as raised:
        torch.save({"weights": torch.zeros(1000)}, "/dev/full")
    assert "unexpected pos" in str(raised.value)
    explained = atomic.explain(raised.value, Path("run/last.ckpt"))
    assert isinstance(explained, WriteError)
    assert "no space left on device while writing run/last.ckpt" in str(explained)


def test_an_unwritable_output_folder_is_said_in_words():
    # /sys refuses new entries even to root (chmod does not stop root)
    target = Path("/sys/segssl_test_output/results.json")
    with pytest.raises(WriteError) as raised:
        write_text(target, "{}")
    assert raised.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    assert str(raised.value).endswith(f"while writing {target}")


def test_a_read_only_file_system_is_said_in_words(tmp_path, monkeypatch):
    target = tmp_path / "results.json"

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(atomic.os, "replace", read_only)
    with pytest.raises(WriteError, match=f"read-only file system while writing {target}"):
        write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ZeroDivisionError):
        write_with(tmp_path / "x.bin", lambda tmp: 1 / 0)
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_users_normal_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    ours = temporary_sibling(tmp_path / "a.h5", ".h5.tmp")
    host = ours.name.split(".")[-3].rsplit("_", 2)[0]
    dead = tmp_path / f".a.h5.{host}_{dead_pid()}_0123abcd.h5.tmp"
    elsewhere = tmp_path / f".a.h5.otherhost_{dead_pid()}_0123abcd.tmp"
    staging = tmp_path / f".a.{host}_{dead_pid()}_0123abcd.staging"
    unrelated = tmp_path / ".notes.tmp"
    for path in (ours, dead, elsewhere, unrelated):
        path.write_bytes(b"x")
    staging.mkdir()
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert all(p.exists() for p in (ours, elsewhere, staging, unrelated))
    assert not dead.exists()
