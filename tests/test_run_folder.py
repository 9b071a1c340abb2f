"""One owner per run folder, checkpoints verified as they are written, last.ckpt at every
validation (issue 15 items 3-5)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segssl.runs.lock import LOCK_NAME, RunFolderBusy, RunFolderError, RunLock, read_holder
from segssl.utils.atomic import WriteError
from segssl.utils.checkpoint_io import AtomicCheckpointIO, DamagedCheckpointError, RunCheckpoint
from segssl.utils.trust import UntrustedInputError
from tests.conftest import TINY

SMALL = [*TINY, "model.features=[4,4,8,8,16,4]"]


@pytest.fixture
def live_pid():
    """The pid of a live process other than this one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(run_dir: Path, pid: int, host: str | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01 10:00:00"}
    lock.write_text(json.dumps(holder))
    return lock


# -- the lock ---------------------------------------------------------------------------------
def test_lock_held_by_a_live_process_refuses_naming_it(tmp_path, live_pid):
    write_lock(tmp_path / "run", live_pid)
    with pytest.raises(RunFolderBusy, match=rf"pid {live_pid} on host {socket.gethostname()}"):
        RunLock(tmp_path / "run").acquire()


def test_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
    lock = write_lock(tmp_path / "run", dead_pid())
    with RunLock(tmp_path / "run"):
        assert read_holder(tmp_path / "run").pid == os.getpid()
        with RunLock(tmp_path / "run"):  # the CLI and the task of one process
            pass
        assert lock.is_file()
    assert not lock.exists()


def test_lock_from_another_host_is_refused_with_the_file_to_delete(tmp_path):
    lock = write_lock(tmp_path / "run", 1, host="elsewhere")
    with pytest.raises(RunFolderBusy, match=f"delete {lock}"):
        RunLock(tmp_path / "run").acquire()


# -- a second run into a used folder ----------------------------------------------------------
@pytest.fixture
def finished_run(run_task) -> Path:
    run_dir, _, _ = run_task([*SMALL, "trainer.max_steps=2"], name="finished")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 42\n")
    return run_dir


def test_rerun_into_a_finished_folder_is_refused_before_hydra_writes(finished_run, capsys):
    from segssl.cli import main

    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(["train", f"hydra.run.dir={finished_run}", *SMALL])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert f"{finished_run} holds a finished run" in error and "Omit hydra.run.dir" in error
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before


def test_second_run_into_a_used_folder_fails_before_training(finished_run, run_task):
    # the task's own guard (a launcher or an in-process call does not pass through cli.main)
    (finished_run / "results.json").unlink()
    with pytest.raises(RunFolderError, match="already holds a run"):
        run_task([*SMALL, "trainer.max_steps=2"], name="finished")


def test_run_into_a_folder_in_use_is_refused_naming_the_holder(tmp_path, live_pid, capsys):
    from segssl.cli import main

    write_lock(tmp_path / "busy", live_pid)
    with pytest.raises(SystemExit):
        main(["train", f"hydra.run.dir={tmp_path / 'busy'}", *SMALL])
    assert f"in use by another segssl run: pid {live_pid}" in capsys.readouterr().err
    assert os.listdir(tmp_path / "busy") == [LOCK_NAME]


def test_training_holds_the_lock_and_releases_it(run_task, monkeypatch):
    seen = []
    original = RunCheckpoint.on_validation_end

    def spy(self, trainer, module):
        seen.append(read_holder(Path(self.dirpath).parent))
        original(self, trainer, module)

    monkeypatch.setattr(RunCheckpoint, "on_validation_end", spy)
    run_dir, _, _ = run_task([*SMALL, "trainer.max_steps=2", "test=false"])
    assert seen and all(h is not None and h.pid == os.getpid() for h in seen)
    assert not (run_dir / LOCK_NAME).exists()


# -- checkpoints verified as written, loaded as data ------------------------------------------
def test_a_checkpoint_that_does_not_read_back_is_refused_and_the_old_one_kept(
    tmp_path, monkeypatch
):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)
    good = target.read_bytes()
    real_save = torch.save

    def truncated_save(obj, path):
        real_save(obj, path)
        Path(path).write_bytes(Path(path).read_bytes()[:-200])

    monkeypatch.setattr(torch, "save", truncated_save)
    with pytest.raises(DamagedCheckpointError, match=f"{target}: the checkpoint just written"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
    assert target.read_bytes() == good
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary left


def test_a_full_disk_while_checkpointing_is_said_in_words(tmp_path, monkeypatch):
    def full(obj, path):
        Path(path).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 123")

    monkeypatch.setattr(torch, "save", full)
    target = tmp_path / "best.ckpt"
    with pytest.raises(WriteError, match=f"no space left on device while writing {target}"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
    assert os.listdir(tmp_path) == []


def test_checkpoint_io_loads_without_running_code(tmp_path):
    marker = tmp_path / "marker"

    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"x": Touch()}, tmp_path / "evil.ckpt")
    with pytest.raises(UntrustedInputError, match="evil.ckpt"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_tracking_by_name_follows_a_moved_folder_and_drops_a_missing_file(tmp_path):
    folder = tmp_path / "moved" / "checkpoints"
    folder.mkdir(parents=True)
    io = AtomicCheckpointIO()
    for name in ("best_step2_dice0.3000.ckpt", "best_step4_dice0.2000.ckpt"):
        io.save_checkpoint({"global_step": 1}, folder / name)
    callback = RunCheckpoint(dirpath=folder, monitor="val/dice", mode="max", save_top_k=2)
    old = "/old/place/checkpoints/"
    callback.load_state_dict(
        {
            "best_k_models": {
                old + "best_step2_dice0.3000.ckpt": torch.tensor(0.3),
                old + "best_step4_dice0.2000.ckpt": torch.tensor(0.2),
                old + "best_step6_dice0.9000.ckpt": torch.tensor(0.9),  # gone
            },
            "best_model_path": old + "best_step6_dice0.9000.ckpt",
            "last_model_path": old + "last.ckpt",
        }
    )
    assert callback.best_model_path == str(folder / "best_step2_dice0.3000.ckpt")
    assert callback.kth_best_model_path == str(folder / "best_step4_dice0.2000.ckpt")
    assert callback.last_model_path == str(folder / "last.ckpt")
    assert list(callback.dropped) == [str(folder / "best_step6_dice0.9000.ckpt")]


# -- last.ckpt ----------------------------------------------------------------------------------
def test_last_checkpoint_is_written_at_every_validation(run_task, monkeypatch):
    from segssl.methods.base import SegmentationMethod

    original = SegmentationMethod._log_evaluation

    def worsening(self, stage):
        if stage != "val":
            return original(self, stage)
        self.log("val/dice", 1.0 / (1 + self.global_step))  # never improves after the first

    monkeypatch.setattr(SegmentationMethod, "_log_evaluation", worsening)
    overrides = [*SMALL, "trainer.max_steps=6", "test=false"]
    run_dir, _, _ = run_task([*overrides, "callbacks.model_checkpoint.save_top_k=1"])
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in checkpoints.glob("best_*.ckpt")] == ["best_step2_dice0.3333.ckpt"]
    assert torch.load(checkpoints / "last.ckpt")["global_step"] == 6
