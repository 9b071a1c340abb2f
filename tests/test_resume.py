"""Resume after SIGKILL: same folder, same global step, same W&B run, continuous metrics."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.conftest import TINY, start_segssl

RESUMABLE = [
    *(o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))),
    "trainer.max_steps=40",
    "trainer.val_check_interval=10",
    "callbacks.latest_checkpoint.every_n_train_steps=3",
    "logger=wandb",
    "method=mean_teacher",  # EMA state must survive too
]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return start_segssl(["train", *args], cwd)


def metrics_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_run(tmp_path):
    process = start(RESUMABLE, tmp_path)
    runs = tmp_path / "outputs" / "train" / "runs"
    deadline = time.time() + 240
    latest = None
    while time.time() < deadline:
        found = list(runs.glob("*/checkpoints/latest.ckpt"))
        if found and torch.load(found[0], weights_only=False)["global_step"] >= 12:
            # Lightning writes a step's checkpoint before it logs that step: kill once the log
            # has caught up, else the row of the step before the checkpoint is never written
            step = torch.load(found[0], weights_only=False)["global_step"]
            csv_file = found[0].parent.parent / "csv" / "version_0" / "metrics.csv"
            logged = metrics_steps(found[0].parent.parent) if csv_file.is_file() else []
            if logged and max(logged) >= step - 1:
                latest = found[0]
                break
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.5)
    assert latest is not None, "no checkpoint within the time limit"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = latest.parent.parent
    assert not (run_dir / "results.json").exists()
    killed_step = torch.load(latest, weights_only=False)["global_step"]
    steps_before = metrics_steps(run_dir)
    wandb_id = json.loads((run_dir / ".segssl_run.json").read_text())["wandb_id"]

    resumed = start([f"resume={run_dir}"], tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert list(runs.iterdir()) == [run_dir]  # no new run folder
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # the original snapshot is kept
    assert list((run_dir / ".hydra").glob("resume_*/config.yaml"))
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["models"]) == {"student", "teacher"}
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 40
    steps = metrics_steps(run_dir)
    assert steps[: len(steps_before)] == steps_before  # nothing of the first run lost
    after = [s for s in steps[len(steps_before) :]]
    assert after and min(after) >= killed_step - 1 and max(after) >= 38
    logged = sorted(set(steps))
    gaps = [(a, b) for a, b in zip(logged, logged[1:], strict=False) if b - a > 1]
    assert not gaps, (gaps, killed_step, steps_before, steps)  # no gap
    assert json.loads((run_dir / ".segssl_run.json").read_text())["wandb_id"] == wandb_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))) >= 1


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "segssl", "train", f"resume={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert f"resume={tmp_path}: not a segssl run folder" in run.stderr


# -- in-process resumes (issue 15): the run's own identity, its checkpoints, its folder --------
FAST = [
    *(o for o in TINY if not o.startswith("trainer.max_steps")),
    "model.features=[4,4,8,8,16,4]",
    "test=false",
]


def snapshot_hydra(run_dir: Path, cfg) -> None:
    """What Hydra writes into a run folder before the task: the config (unresolved) and its
    own settings, with the group choices the run was composed from."""
    from omegaconf import open_dict

    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(job, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), run_dir / ".hydra" / "hydra.yaml")


@pytest.fixture
def first_run(run_task):
    """An unfinished run (test=false) with Hydra's snapshot, as a killed run leaves it."""

    def run(overrides: list[str], name: str = "run") -> Path:
        run_dir, _, cfg = run_task([*FAST, *overrides], name=name)
        snapshot_hydra(run_dir, cfg)
        assert not (run_dir / "results.json").exists()
        return run_dir

    return run


def train_rows(run_dir: Path) -> list[int]:
    return metrics_steps(run_dir)


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_resumed_cps_run_keeps_its_method_and_applies_allowed_overrides(first_run, run_task):
    run_dir = first_run(["method=cps", "trainer.max_steps=2"])
    # the resuming command composes the default method (dsaif): the run must stay CPS
    run_task([f"resume={run_dir}", "trainer.max_steps=4", "test=true"], name="run")
    results = results_of(run_dir)
    assert results["config"]["method_name"] == "cps"
    assert results["config"]["method"]["_target_"].endswith("CrossPseudoSupervision")
    assert "cps" in results["config"]["tags"]
    assert set(results["models"]) == {"net1", "net2", "ensemble"}
    assert torch.load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    (record,) = (run_dir / ".hydra").glob("resume_*")
    applied = yaml.safe_load((record / "overrides.yaml").read_text())
    assert applied == ["trainer.max_steps=4", "test=true"]
    assert "method_name: cps" in (record / "config.yaml").read_text()
    (entry,) = json.loads((run_dir / ".segssl_run.json").read_text())["resumes"]
    assert entry["global_step"] == 2 and entry["overrides"] == ["trainer.max_steps=4", "test=true"]


def test_resume_refuses_overrides_that_change_the_run_before_writing(first_run, capsys):
    from segssl.cli import main

    run_dir = first_run(["trainer.max_steps=2"])
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    args = [f"resume={run_dir}", "data.image_size=64", "trainer.max_steps=1", "method=supervised"]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args, "trainer.devices=1", "logger=none", "data.labeled=1"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    for conflict in ("data.image_size=64 (run: 32)", "method=supervised (run: dsaif)"):
        assert conflict in error
    assert "trainer.max_steps=1 (run: 2; only a larger value" in error
    assert "trainer.devices" not in error.split("A resume accepts")[0]  # allowed
    assert "logger=none" not in error and "data.labeled" not in error  # allowed / unchanged
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_resume_from_a_named_checkpoint_starts_there(first_run, run_task):
    run_dir = first_run(["trainer.max_steps=4"])
    assert len(train_rows(run_dir)) == 4
    (step2,) = (run_dir / "checkpoints").glob("best_step2_*.ckpt")
    run_task([f"resume={step2}", "test=true"], name="run")
    # steps 2 and 3 trained again (from the latest checkpoint, step 4, nothing would be)
    assert sorted(train_rows(run_dir)) == [0, 1, 2, 2, 3, 3]
    entry = json.loads((run_dir / ".segssl_run.json").read_text())["resumes"][-1]
    assert entry["checkpoint"] == f"checkpoints/{step2.name}" and entry["global_step"] == 2


def best_names(run_dir: Path) -> dict[str, float]:
    return {
        p.name: float(p.stem.rsplit("dice", 1)[1])
        for p in (run_dir / "checkpoints").glob("best_step*.ckpt")
    }


def test_moved_run_folder_resumes_and_tests_its_true_best(first_run, run_task, tmp_path):
    run_dir = first_run(["trainer.max_steps=6"])
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    _, _, _ = run_task([f"resume={moved}", "trainer.max_steps=8", "test=true"], name="moved")
    results = results_of(moved)
    tested = Path(results["checkpoint"])
    assert tested.parent == moved / "checkpoints" and tested.is_file()
    names = best_names(moved)
    assert len(names) == 2  # the top 2 kept, tracked by name in the moved folder
    assert names[tested.name] == max(names.values())
    assert "selection" not in results.get("extra", {})  # the plain best on validation


def test_damaged_best_checkpoint_is_dropped_and_the_next_best_tested(first_run, run_task, caplog):
    run_dir = first_run(["trainer.max_steps=4"])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt")["callbacks"]
    (tracking,) = (s for k, s in state.items() if "val/dice" in k)
    assert set(tracking["best_k_models"]) == set(best_names(run_dir))  # names, not paths
    best = run_dir / "checkpoints" / tracking["best_model_path"]
    (other,) = set(tracking["best_k_models"]) - {best.name}
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        run_task([f"resume={run_dir}", "test=true"], name="run")
    assert f"Dropping {best} from the best checkpoints" in caplog.text
    results = results_of(run_dir)
    assert Path(results["checkpoint"]).name == other
    scores = [float(s) for s in tracking["best_k_models"].values()]
    if len(set(scores)) == 2:  # the dropped one was strictly better: say so
        assert results["extra"]["selection"].startswith("next-best on validation")


class _TouchOnLoad:
    """A pickle whose loading would run code: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def composed_run(tmp_path, tiny_data_dir):
    """A run folder as Hydra leaves it before training (no training needed)."""
    from tests.conftest import compose_config

    def make(name: str = "crafted") -> Path:
        run_dir = tmp_path / name
        cfg = compose_config("train", [*FAST, "trainer.max_steps=2"], run_dir, tiny_data_dir)
        snapshot_hydra(run_dir, cfg)
        (run_dir / "checkpoints").mkdir()
        return run_dir

    return make


@pytest.mark.parametrize("named", [False, True], ids=["run-folder", "checkpoint-file"])
def test_resume_never_unpickles_code_from_a_checkpoint(composed_run, run_task, tmp_path, named):
    from segssl.utils.trust import UntrustedInputError

    run_dir = composed_run("crafted")
    marker = tmp_path / "marker"
    evil = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 1, "payload": _TouchOnLoad(marker)}, evil)
    with pytest.raises(UntrustedInputError, match=str(evil)):
        run_task([f"resume={evil if named else run_dir}"], name="crafted")
    assert not marker.exists()


def test_resume_refuses_a_run_config_that_names_os_system(composed_run, tmp_path, capsys):
    from segssl.cli import main

    run_dir = composed_run()
    marker = tmp_path / "marker"
    config = run_dir / ".hydra" / "config.yaml"
    stored = OmegaConf.load(config)
    stored.method = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    OmegaConf.save(stored, config)
    with pytest.raises(SystemExit):
        main(["train", f"resume={run_dir}"])
    error = capsys.readouterr().err
    assert str(config) in error and "'method._target_: os.system'" in error
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_whose_config_names_os_system(composed_run, run_task):
    from segssl.utils.trust import UntrustedInputError

    run_dir = composed_run()
    bad = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 1, "segssl_config": {"method": {"_target_": "os.system"}}}, bad)
    with pytest.raises(UntrustedInputError, match=r"segssl_config\.method\._target_: os\.system"):
        run_task([f"resume={run_dir}"], name="crafted")


def test_finished_run_is_refused_unless_extended(first_run, run_task, capsys):
    from segssl.cli import main

    run_dir = first_run(["trainer.max_steps=2"])
    run_task([f"resume={run_dir}", "test=true"], name="run")
    finished = results_of(run_dir)
    with pytest.raises(SystemExit):
        main(["train", f"resume={run_dir}"])
    assert "this run is finished (results.json)" in capsys.readouterr().err
    assert results_of(run_dir) == finished
    run_task([f"resume={run_dir}", "trainer.max_steps=4"], name="run")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert results_of(run_dir)["config"]["trainer"]["max_steps"] == 4
    (moved,) = (run_dir / ".hydra").glob("resume_*/results.json")  # the earlier result is kept
    assert json.loads(moved.read_text()) == finished


def test_testing_a_checkpoint_leaves_the_tracked_checkpoints_alone(tmp_path, caplog):
    """Lightning restores callback states for test too; the tested checkpoint's snapshot of the
    top-k (which may name files deleted since) must neither replace the run's tracking nor warn."""
    from types import SimpleNamespace

    from pytorch_lightning.trainer.states import TrainerFn

    from segssl.utils.checkpoint_io import RunCheckpoint

    callback = RunCheckpoint(dirpath=tmp_path, monitor="val/dice", mode="max", save_top_k=2)
    callback.best_k_models = {str(tmp_path / "best_step4.ckpt"): torch.tensor(0.9)}
    snapshot = {"best_k_models": {"best_step2.ckpt": 0.5, "best_step4.ckpt": 0.9}}
    for fn, tracked in ((TrainerFn.TESTING, 1), (TrainerFn.FITTING, 0)):
        caplog.clear()
        callback.on_load_checkpoint(SimpleNamespace(state=SimpleNamespace(fn=fn)), None, {})
        callback.load_state_dict(dict(snapshot))
        assert len(callback.best_k_models) == tracked
        # resuming a fit checks the files (neither exists here); testing does not touch them
        assert ("Dropping" in caplog.text) == (fn == TrainerFn.FITTING)


@pytest.fixture
def batches_seen(monkeypatch) -> list[tuple[int, str]]:
    """(global step, fingerprint) of every training step: the images it trained on and torch's
    random state (read, not drawn from) as the step began."""
    from segssl.methods.base import SegmentationMethod

    seen: list[tuple[int, str]] = []
    training_step = SegmentationMethod.training_step

    def recording(self, batch, batch_idx):
        digest = hashlib.sha1(torch.get_rng_state().numpy().tobytes())
        for stream in ("labeled", "unlabeled"):
            if stream in batch:
                digest.update(batch[stream]["image_1"].numpy().tobytes())
        seen.append((self.global_step, digest.hexdigest()))
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationMethod, "training_step", recording)
    return seen


def test_a_resume_draws_fresh_batches_not_a_replay_of_step_0(first_run, run_task, batches_seen):
    """Seeded as at its start, a resumed run would replay step 0's data order, augmentation and
    mixing draws: a job preempted every k steps would train on its first k batches again and
    again. It continues on a stream of its seed and step, the same each time that checkpoint is
    resumed."""
    run_dir = first_run(["trainer.max_steps=2"])
    first = dict(batches_seen)
    assert sorted(first) == [0, 1]
    shutil.copytree(run_dir, run_dir.parent / "copy")
    resumed = {}
    for name in ("run", "copy"):
        batches_seen.clear()
        run_task([f"resume={run_dir.parent / name}", "trainer.max_steps=4"], name=name)
        resumed[name] = dict(batches_seen)
        assert sorted(resumed[name]) == [2, 3]
    assert {resumed["run"][2], resumed["run"][3]}.isdisjoint({first[0], first[1]})
    assert resumed["copy"] == resumed["run"]  # a function of the checkpoint, not of the clock
    (entry,) = json.loads((run_dir / ".segssl_run.json").read_text())["resumes"]
    run_seed = OmegaConf.load(run_dir / ".hydra" / "config.yaml").seed
    assert entry["global_step"] == 2 and isinstance(entry["seed"], int)
    assert entry["seed"] != run_seed  # recorded: the stream the run continued on
