"""A killed view-cache build leaves no workers and no temporary file, and no partial cache is
ever trusted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from segssl.data.view_cache import CACHE_FORMAT, open_or_build

REPO = Path(__file__).resolve().parents[1]


SECONDS_PER_IMAGE = 0.5


def slow_views(image: np.ndarray) -> dict[str, np.ndarray]:
    """Stands for the DSAIF filter of a large image (seconds of work per image)."""
    time.sleep(SECONDS_PER_IMAGE)
    return {"max": image + 1, "min": image - 1}


BUILD = """
import sys
import numpy as np
from pathlib import Path
from segssl.data.view_cache import open_or_build
import tests.test_view_cache_cleanup as helpers

helpers.SECONDS_PER_IMAGE = 60.0  # longer than the test waits: only a kill ends a worker
if sys.argv[2] == "handlers":  # as train does
    from segssl.utils.signals import install_stop_handlers

    install_stop_handlers()
images = {f"c{i}": np.full((8, 8), i, np.float32) for i in range(200)}
open_or_build(Path(sys.argv[1]), "key", list(images), images.__getitem__, helpers.slow_views, 2)
"""


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie is reaped by init, if ever)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_build(cache_dir: Path, handlers: bool) -> tuple[subprocess.Popen, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", BUILD, str(cache_dir), "handlers" if handlers else "none"]
    process = subprocess.Popen(args, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        workers = children(process.pid)
        if len(workers) >= 2:
            time.sleep(1.0)  # the workers are busy
            return process, workers
        assert process.poll() is None, "the build ended before its workers started"
        time.sleep(0.2)
    process.kill()
    pytest.fail("no pool workers within the time limit")


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(running(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if running(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_parent(tmp_path):
    process, workers = start_build(tmp_path / "cache", handlers=False)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = wait_gone(workers, 5)
    for pid in left:  # never leave them behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their SIGKILLed parent"


def test_sigterm_stops_the_build_and_its_workers(tmp_path):
    process, workers = start_build(tmp_path / "cache", handlers=True)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    took = time.monotonic() - sent
    left = wait_gone(workers, 5)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert process.returncode == 143
    assert took < 10, f"took {took:.1f} s to stop"
    assert not left, f"workers {left} outlived the stopped build"
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


WRITER = """
import sys, time
from pathlib import Path
from segssl.utils.atomic import atomic_path
with atomic_path(Path(sys.argv[1]) / "key.h5") as tmp:
    tmp.write_bytes(b"half a cache")
    print(tmp, flush=True)
    time.sleep(120)
"""


def test_a_killed_writers_temporary_is_removed_by_the_next_build(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(cache)], env=env, stdout=subprocess.PIPE, text=True
    )
    orphan = Path(writer.stdout.readline().strip())
    # a live writer's temporary is left alone
    images = {f"c{i}": np.full((4, 4), i, np.float32) for i in range(3)}
    open_or_build(cache, "other", list(images), images.get, lambda im: {"max": im}, 1)
    assert orphan.is_file()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert orphan.is_file()  # what a killed write leaves behind

    views = open_or_build(cache, "key", list(images), images.get, lambda im: {"max": im * 2}, 1)
    assert not orphan.exists()
    assert sorted(p.name for p in cache.iterdir()) == ["key.h5", "other.h5"]
    assert [views.read(c)["max"][0, 0, 0] for c in images] == [0, 2, 4]


@pytest.mark.parametrize("written", ["older format", "no completion mark"])
def test_a_cache_without_its_completion_mark_is_rebuilt(tmp_path, written):
    cache = tmp_path / "cache"
    cache.mkdir()
    images = {f"c{i}": np.full((4, 4), i, np.float32) for i in range(2)}
    with h5py.File(cache / "key.h5", "w") as f:  # e.g. an older or damaged partial file
        for case in images:
            if written == "older format":  # the views of each case in a group, no format
                f.create_group(case).create_dataset("max", data=np.full((4, 4), -7, np.float32))
                f.attrs["num_cases"] = 2
            else:  # today's format, the attributes written last missing
                f.create_dataset(case, data=np.full((2, 4, 4), -7, np.float32))
                f.attrs["format"] = CACHE_FORMAT
    views = open_or_build(cache, "key", list(images), images.get, lambda im: {"max": im + 10}, 1)
    assert [views.read(c)["max"][0, 0, 0] for c in images] == [10, 11]
    # and the rebuilt file is trusted the next time
    again = open_or_build(cache, "key", list(images), images.get, lambda im: pytest.fail(), 1)
    assert [again.read(c)["max"][0, 0, 0] for c in images] == [10, 11]
