"""Issue 22, items 1 and 3: a refused command leaves every byte of its run folder as it was, and
a failed one removes only what it wrote itself.

Hydra used to write ``.hydra/`` and the job log into the run folder before segssl could refuse
the command, and a failed start then removed a folder holding only ``.log`` files, the user's
own ones included. segssl now writes those files once the task has accepted the folder."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segssl.runs.hydra_app import HYDRA_FILES, PendingFileHandler, _Job
from segssl.runs.lock import LOCK_NAME
from tests.conftest import TINY, start_segssl
from tests.helpers.cli import run_cli
from tests.test_trust import checkpoint, image  # noqa: F401 - fixtures

SMALL = [*TINY, "model.features=[4,4,8,8,16,4]"]
TEXT = dict(capture_output=True, text=True, check=True)
# settings that pass every check and fail once the run has started: its data are not there
MISSING_DATA = ["data=acdc", "data.root=/nonexistent", "logger=csv"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def fake_training_run(folder: Path, seed: int = 1, labeled: int = 2) -> Path:
    """What a training run leaves (results, its composed config, a checkpoint, its log); the
    refusals never read more than that a run is there."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(f"seed: {seed}\ndata:\n  labeled: {labeled}\n")
    (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices: {}\n")
    (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (folder / "results.json").write_text(json.dumps({"config": {"seed": seed}}))
    (folder / "hydra_app.log").write_text("the run's own log\n")
    return folder


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, tiny_data_dir) -> Path:
    """Commands start in ``tmp_path`` (their default outputs/ there), on the tiny data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGSSL_DATA_DIR", str(tiny_data_dir))
    monkeypatch.delenv("SEGSSL_OUTPUT_DIR", raising=False)
    return tmp_path


# -- 1. a refused start changes nothing ----------------------------------------------------------
def test_sweep_into_a_sweep_whose_job_0_holds_a_run_changes_nothing(in_tmp, capsys):
    sweep = in_tmp / "SWEEP"
    fake_training_run(sweep / "0", seed=1, labeled=2)
    (sweep / "multirun.yaml").write_text("the earlier sweep\n")
    before = snapshot(sweep)

    code, out = run_cli(
        ["train", "-m", "seed=2", "data.labeled=6", f"hydra.sweep.dir={sweep}", *SMALL], capsys
    )

    assert code == 1
    assert "its job folder 0 is taken" in out and "holds a finished run" in out
    assert snapshot(sweep) == before  # SWEEP/0/.hydra still says seed 1, labeled 2
    assert OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml").data.labeled == 2


@pytest.mark.parametrize("command", ["test", "predict"])
def test_test_or_predict_into_a_training_run_changes_nothing(
    command,
    in_tmp,
    checkpoint,  # noqa: F811
    image,  # noqa: F811
    capsys,
):
    run = fake_training_run(in_tmp / "RUN")
    # the lock a killed run left: taking it over would already change the folder
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **TEXT)
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "2024-01-01"}
    (run / LOCK_NAME).write_text(json.dumps(holder))
    before = snapshot(run)
    args = [f"ckpt_path={checkpoint}", f"hydra.run.dir={run}"]
    if command == "predict":
        args += [f"input={image}", f"output={in_tmp / 'masks'}"]

    code, out = run_cli([command, *args], capsys)

    assert code == 1
    assert f"{run} holds a run or a command's output (results.json)" in out
    assert snapshot(run) == before
    assert not (in_tmp / "masks").exists()


@pytest.mark.slow  # two fresh interpreters importing torch and Lightning, one of them trains
def test_two_trains_into_one_folder_the_second_is_refused_and_hydra_keeps_the_first(
    tmp_path, tiny_data_dir
):
    run = tmp_path / "RUN"
    args = [*SMALL, "trainer.max_steps=2", "test=false", f"hydra.run.dir={run}"]
    env = {"SEGSSL_DATA_DIR": str(tiny_data_dir), "HYDRA_FULL_ERROR": "0"}
    first = start_segssl(["train", "seed=1", *args], tmp_path, **env)
    time.sleep(0.3)
    second = start_segssl(["train", "seed=2", *args], tmp_path, **env)
    outputs = {1: first.communicate(timeout=600)[0], 2: second.communicate(timeout=600)[0]}
    codes = {1: first.returncode, 2: second.returncode}

    # whichever reached the lock first trains; the other is refused, whatever the timing
    assert sorted(codes.values())[0] == 0 and sorted(codes.values())[1] != 0, outputs
    winner = min(codes, key=codes.get)
    loser = 3 - winner
    refusals = ("in use by another segssl run", "already holds a run", "holds an unfinished run")
    assert any(r in outputs[loser] for r in refusals), outputs[loser]
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert config.seed == winner
    assert f"seed={winner}" in (run / ".hydra" / "overrides.yaml").read_text()
    assert OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.choices.method == "dsaif"
    assert list((run / "checkpoints").glob("*.ckpt"))


def test_hydra_output_subdir_cannot_be_set(in_tmp, capsys):
    code, out = run_cli(["test", "ckpt_path=x.ckpt", "hydra.output_subdir=elsewhere"], capsys)
    assert code == 2 and "hydra.output_subdir cannot be set" in out
    assert not (in_tmp / "outputs").exists()


# -- 3. a failed start removes only what it wrote --------------------------------------------------
@pytest.fixture
def mylogs(in_tmp) -> Path:
    folder = in_tmp / "mylogs"
    folder.mkdir()
    (folder / "server.log").write_text("server started\n")
    (folder / "app.log").write_text("app started\n")
    return folder


@pytest.mark.parametrize(
    "args",
    [
        ["train", "seed=abc", *SMALL],  # refused by the settings check
        ["train", *MISSING_DATA],  # fails once accepted
        ["test", "ckpt_path=missing.ckpt"],
        ["predict"],  # no ckpt_path, input or output
    ],
    ids=["train-bad-seed", "train-missing-data", "test-missing-checkpoint", "predict-no-input"],
)
def test_a_failed_start_leaves_the_users_folder_byte_identical(mylogs, args, capsys):
    before = snapshot(mylogs)
    code, out = run_cli([*args, f"hydra.run.dir={mylogs}"], capsys)
    assert snapshot(mylogs) == before
    assert code == 1 and "Error executing job" in out  # the task ran, and failed


def test_a_failed_predict_after_acceptance_removes_only_its_own_files(
    mylogs,
    checkpoint,  # noqa: F811
    capsys,
):
    (mylogs / "broken.png").write_bytes(b"not an image")
    before = snapshot(mylogs)
    args = [f"ckpt_path={checkpoint}", f"input={mylogs / 'broken.png'}", "output=masks"]
    code, out = run_cli(["predict", *args, f"hydra.run.dir={mylogs}"], capsys)
    assert code == 1 and "broken.png" in out
    assert snapshot(mylogs) == before


@pytest.mark.parametrize(
    "args",
    [["seed=abc", *SMALL], MISSING_DATA],
    ids=["refused", "failed-once-accepted"],
)
def test_a_failed_start_into_a_new_folder_leaves_no_folder(in_tmp, args, capsys):
    code, out = run_cli(["train", *args, f"hydra.run.dir={in_tmp / 'new'}"], capsys)
    assert code == 1 and "Error executing job" in out  # the task ran, and failed
    assert not (in_tmp / "new").exists()


# -- accepted runs still get their .hydra/ --------------------------------------------------------
def test_an_accepted_run_has_the_three_hydra_files_and_its_log(
    in_tmp,
    checkpoint,  # noqa: F811
    capsys,
):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from segssl.runs.hydra_app import config_dir

    run = in_tmp / "tested"
    overrides = [f"ckpt_path={checkpoint}", "split=val"]
    code, _ = run_cli(["test", *overrides, f"hydra.run.dir={run}"], capsys)

    assert code == 0 and (run / "results.json").is_file()
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        composed = compose("test", overrides=overrides)
    # the composed config, unresolved, as Hydra writes it
    assert (run / ".hydra" / "config.yaml").read_text() == OmegaConf.to_yaml(composed)
    assert OmegaConf.load(run / ".hydra" / "overrides.yaml") == overrides
    hydra_yaml = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra
    assert hydra_yaml.runtime.output_dir == str(run) and hydra_yaml.output_subdir == ".hydra"
    log = run / "hydra_app.log"
    assert "Results written to" in log.read_text()


# -- what a failure removes (moved here from test_loose_ends: the same rules, now by origin) ---
def accepted_job(folder: Path, single: bool = True, made: bool = True) -> _Job:
    """A job whose run folder was accepted (its .hydra/ and log written), as the app runs it."""
    folder.mkdir(parents=True, exist_ok=True)
    job = _Job(folder, single, True, made, {name: "{}\n" for name in HYDRA_FILES})
    log = folder / "hydra_app.log"
    before = log.read_bytes() if log.exists() else None
    handler = PendingFileHandler(log)
    logging.getLogger("segssl.test_refused").addHandler(handler)
    logging.getLogger("segssl.test_refused").warning("held until the folder is accepted")
    assert (log.read_bytes() if log.exists() else None) == before
    job.accept(bookkeeping=True)
    logging.getLogger("segssl.test_refused").removeHandler(handler)
    assert "held until the folder is accepted" in handler.path.read_text()
    return job


@pytest.mark.parametrize(
    "extra", ["results.json", "checkpoints/last.ckpt", ".hydra/resume_1.yaml", "notes.txt"]
)
def test_a_failed_run_that_wrote_anything_else_keeps_its_folder(tmp_path, extra):
    job = accepted_job(tmp_path / "runs" / "stamp")
    (job.folder / extra).parent.mkdir(parents=True, exist_ok=True)
    (job.folder / extra).write_text("keep")
    job.clean_up()
    assert (job.folder / extra).read_text() == "keep"
    assert (job.folder / ".hydra" / "config.yaml").is_file()  # what a resume reads


def test_a_failed_run_removes_its_own_files_and_only_a_folder_it_made(tmp_path):
    job = accepted_job(tmp_path / "sweep" / "0", single=False)
    job.clean_up()  # a sweep's job folder stays: report lists the failed job
    assert (job.folder / ".hydra" / "config.yaml").is_file()

    job = accepted_job(tmp_path / "runs" / "stamp")
    job.clean_up()
    assert not job.folder.exists() and job.folder.parent.is_dir()

    users = tmp_path / "users"
    users.mkdir()
    (users / "hydra_app.log").write_text("the user's own\n")
    job = accepted_job(users, made=False)
    job.clean_up()
    assert os.listdir(users) == ["hydra_app.log"]  # appended to, never removed
    assert (users / "hydra_app.log").read_text().startswith("the user's own\n")


def test_an_accepted_sweep_writes_each_jobs_hydra_files_and_log(
    in_tmp,
    checkpoint,  # noqa: F811
    capsys,
):
    sweep = in_tmp / "SWEEP"
    code, out = run_cli(
        ["test", "-m", f"ckpt_path={checkpoint}", "split=val,test", f"hydra.sweep.dir={sweep}"],
        capsys,
    )
    assert code == 0, out
    for job, split in (("0", "val"), ("1", "test")):
        assert sorted(p.name for p in (sweep / job / ".hydra").iterdir()) == sorted(HYDRA_FILES)
        assert OmegaConf.load(sweep / job / ".hydra" / "config.yaml").split == split
        assert f"split={split}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
        assert "Results written to" in (sweep / job / "hydra_app.log").read_text()
    assert (sweep / "multirun.yaml").is_file()
