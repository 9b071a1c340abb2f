"""Resume takes the branch the user last chose (issue 22, item 6).

``resume=RUN/checkpoints/best_step2_*.ckpt`` goes back to step 2 of a run that went on to step
4: a branch. A later plain ``resume=RUN`` continues that branch (not the newer checkpoints of
the run it left), says which, and the branch's last checkpoint is ``last.ckpt`` (no stale one
beside a ``last-v1.ckpt``). A checkpoint holding pickled objects is refused in words, never
skipped for an older one. One trained run (4 steps) is shared by every test, each on a copy."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from segssl.runs.resume import ResumeError
from segssl.utils.trust import UntrustedInputError
from tests.conftest import TINY, compose_config
from tests.test_resume import snapshot_hydra

FAST = [
    *(o for o in TINY if not o.startswith("trainer.max_steps")),
    "model.features=[4,4,8,8,16,4]",
    "test=false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Path:
    """An unfinished run of 4 steps: best_step2, best_step4 and last.ckpt (step 4)."""
    from segssl.commands.train import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config("train", [*FAST, "trainer.max_steps=4"], run_dir, tiny_data_dir)
    train(cfg)
    snapshot_hydra(run_dir, cfg)
    return run_dir


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run where ``run_task(..., name="run")`` writes."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def step_of(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


def step2(run_dir: Path) -> Path:
    (found,) = (run_dir / "checkpoints").glob("best_step2_*.ckpt")
    return found


def run_state(run_dir: Path) -> dict:
    path = run_dir / ".segssl_run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def killed(*args, **kwargs):
    raise RuntimeError("killed right after the start")


def test_plain_resume_continues_the_branch_chosen_last_not_the_run_it_left(
    run_dir, run_task, monkeypatch, caplog
):
    """Before: the abandoned resume from step 2 left last.ckpt (step 4) of the old run in
    place, and the plain resume went back to it without a word (nothing trained)."""
    original_last = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(pl.Trainer, "fit", killed)
        with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match="killed"):
            run_task([f"resume={step2(run_dir)}"], name="run")
    assert f"Branching {run_dir} at checkpoints/{step2(run_dir).name} (step 2)" in caplog.text
    (left,) = (run_dir / "checkpoints").glob("abandoned_*")
    assert (left / "last.ckpt").read_bytes() == original_last  # kept, out of the way
    assert sorted(p.name for p in left.glob("best_step4_*.ckpt"))
    (branch,) = run_state(run_dir)["branches"]
    assert branch["global_step"] == 2 and branch["left"] == f"checkpoints/{left.name}"

    caplog.clear()
    with caplog.at_level("INFO"):
        run_task([f"resume={run_dir}"], name="run")
    entry = run_state(run_dir)["resumes"][-1]
    assert entry["checkpoint"] == f"checkpoints/{step2(run_dir).name}"
    assert entry["global_step"] == 2
    assert "Continuing the branch chosen on" in caplog.text
    assert f"at checkpoints/{step2(run_dir).name} (step 2)" in caplog.text
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 4  # the branch's own
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() != original_last


def test_a_finished_branch_leaves_one_last_checkpoint(run_dir, run_task):
    """Before: last.ckpt (step 4 of the run left) stayed beside the branch's last-v1.ckpt."""
    original_last = run_dir / "checkpoints" / "last.ckpt"
    old_weights = torch.load(original_last, weights_only=True)["state_dict"]
    run_task([f"resume={step2(run_dir)}", "test=true"], name="run")
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("last*.ckpt")) == ["last.ckpt"]
    assert step_of(checkpoints / "last.ckpt") == 4
    new_weights = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(old_weights[k], new_weights[k]) for k in old_weights)
    results = json.loads((run_dir / "results.json").read_text())
    assert Path(results["evaluations"]["last"]["checkpoint"]) == checkpoints / "last.ckpt"
    # every checkpoint left in checkpoints/ is of this branch or before it
    (left,) = checkpoints.glob("abandoned_*")
    assert {p.name for p in left.iterdir()} >= {"last.ckpt"}


def test_going_back_to_a_branch_left_earlier_takes_its_checkpoints_back(
    run_dir, run_task, monkeypatch
):
    """A checkpoint of a branch left earlier can be named: that branch becomes the run's
    again (its checkpoints back in checkpoints/, the current ones set aside)."""
    from segssl.runs.resume import latest_checkpoint

    checkpoints = run_dir / "checkpoints"
    original = {p.name: p.read_bytes() for p in checkpoints.glob("*.ckpt")}
    monkeypatch.setattr(pl.Trainer, "fit", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_task([f"resume={step2(run_dir)}"], name="run")
    (left,) = checkpoints.glob("abandoned_*")
    time.sleep(1.1)  # the next resume's folder gets a time stamp of its own
    with pytest.raises(RuntimeError, match="killed"):
        run_task([f"resume={left / 'last.ckpt'}"], name="run")
    assert {p.name: p.read_bytes() for p in checkpoints.glob("*.ckpt")} == original
    assert latest_checkpoint(run_dir) == checkpoints / "last.ckpt"
    branches = run_state(run_dir)["branches"]
    assert branches[-1]["checkpoint"] == f"checkpoints/{left.name}/last.ckpt"
    assert branches[-1]["global_step"] == 4


def test_branches_side_by_side_are_listed_not_guessed(run_dir, run_task):
    """A folder as earlier versions left it after a branch: last.ckpt and last-v1.ckpt."""
    checkpoints = run_dir / "checkpoints"
    shutil.copy(step2(run_dir), checkpoints / "last-v1.ckpt")
    with pytest.raises(ResumeError, match="more than one branch") as refused:
        run_task([f"resume={run_dir}"], name="run")
    for listed in ("checkpoints/last.ckpt (step 4)", "checkpoints/last-v1.ckpt (step 2)"):
        assert listed in str(refused.value)
    assert f"Name it: resume={run_dir}/checkpoints/<file>" in str(refused.value)
    assert "resumes" not in run_state(run_dir)  # refused before anything is recorded


def test_an_abandoned_branch_recorded_by_an_earlier_version_is_listed_not_guessed(
    run_dir, run_task
):
    """Earlier versions recorded a resume from step 2 and moved nothing: checkpoints past
    step 2 written before that resume began belong to the run it left."""
    past = time.time() - 3600
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        os.utime(path, (past, past))
    state = run_state(run_dir)
    state["resumes"] = [
        {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "checkpoint": f"checkpoints/{step2(run_dir).name}",
            "global_step": 2,
        }
    ]
    (run_dir / ".segssl_run.json").write_text(json.dumps(state))
    with pytest.raises(ResumeError, match="more than one branch") as refused:
        run_task([f"resume={run_dir}"], name="run")
    assert "checkpoints/last.ckpt (step 4)" in str(refused.value)
    assert f"checkpoints/{step2(run_dir).name} (step 2)" in str(refused.value)


class _RunsOnLoad:
    """A pickle whose loading would run code creating a marker file: a shell command, or a
    call of an everyday class's method."""

    def __init__(self, marker: Path, shell: bool) -> None:
        self.marker, self.shell = marker, shell

    def __reduce__(self):
        if self.shell:
            return (os.system, (f"touch {self.marker}",))
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    ("legacy", "shell"),
    [(False, True), (True, True), (True, False)],
    ids=["zip-os.system", "legacy-os.system", "legacy-Path.touch"],
)
def test_a_pickled_newest_checkpoint_is_refused_in_words(
    run_dir, run_task, tmp_path, legacy, shell
):
    """Before: skipped as unreadable (or, in the legacy format, as damaged), and the run went on
    from last.ckpt without saying why."""
    marker = tmp_path / "marker"
    evil = run_dir / "checkpoints" / "latest.ckpt"
    payload = {"global_step": 99, "payload": _RunsOnLoad(marker, shell)}
    torch.save(payload, evil, _use_new_zipfile_serialization=not legacy)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with pytest.raises(UntrustedInputError) as refused:
        run_task([f"resume={run_dir}"], name="run")
    message = str(refused.value)
    assert str(evil) in message and "pickled Python objects" in message
    assert "does not fall back to an older one" in message
    assert "checkpoints/last.ckpt (step 4)" in message  # what could be named instead
    assert not marker.exists()
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
