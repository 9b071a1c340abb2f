"""A checkpoint or a run folder is only ever data (issue 22).

A real tiny run is trained once; each test crafts a copy of it the way an attacker (or a
damaged file) would, and runs ``test``, ``predict`` and ``train resume=`` on it:

- the payload that made each of them overwrite any file (``_target_`` a method reached through
  an allowed class, ``AtomicCheckpointIO.save_checkpoint``, with ``_args_: [null, {...}, PATH]``)
  in every place a file supplies a config: ``hyper_parameters.model``,
  ``segssl_config.data.num_workers``, a run folder's ``.hydra/config.yaml`` callbacks and the
  group choices of its ``.hydra/hydra.yaml``; refused, exit 1, the key named, the file intact;
- weights holding NaN or Inf, refused by name (they tested to Dice 0 with status complete);
- ``hyper_parameters.num_classes=10**9``, refused before anything is allocated;
- a pickled payload, refused saying it holds pickled objects, also inside ``resume=RUN``.
"""

from __future__ import annotations

import copy
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segssl.commands import test as test_command
from segssl.commands.predict import predict_files
from segssl.utils.trust import UntrustedInputError
from tests.conftest import TINY, compose_config, segssl_env, start_segssl

TRAIN = [
    *(o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))),
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "method=supervised",
    "model.features=[4,4,8,8,16,4]",
    "test=false",
    "logger=csv",
]
SAVE = "segssl.utils.checkpoint_io.AtomicCheckpointIO.save_checkpoint"
ORIGINAL = b"the user's own file\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder of the CLI (2 steps): .hydra/, checkpoints/*.ckpt, its data."""
    base = tmp_path_factory.mktemp("trained")
    run = base / "run"
    process = start_segssl(
        ["train", *TRAIN, f"hydra.run.dir={run}"], base, SEGSSL_DATA_DIR=str(base / "data")
    )
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt")
    return run


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, to craft."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of the user's that the payloads name as their target."""
    path = tmp_path / "victim.txt"
    path.write_bytes(ORIGINAL)
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    Image.fromarray(np.arange(24 * 20, dtype=np.uint8).reshape(24, 20)).save(path)
    return path


def payload(victim: Path) -> dict[str, Any]:
    """What replaced ``victim`` with chosen content when built: an unbound method of an
    allowed class, called with ``self=None``, a "checkpoint" and the path."""
    return {"_target_": SAVE, "_args_": [None, {"k": "attacker's content"}, str(victim)]}


def craft_checkpoints(run: Path, change) -> Path:
    """Apply ``change(state)`` to every checkpoint of ``run`` (whichever a resume takes);
    returns ``last.ckpt``."""
    for path in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
    return run / "checkpoints" / "last.ckpt"


def segssl(args: list[str], cwd: Path, timeout: int = 300, **popen: Any) -> tuple[int, str]:
    process = start_segssl(args, cwd) if not popen else _start(args, cwd, **popen)
    output = process.communicate(timeout=timeout)[0]
    return process.returncode, output


def _start(args: list[str], cwd: Path, **popen: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "segssl", *args],
        cwd=cwd,
        env=segssl_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def command(name: str, run: Path, tmp_path: Path, image: Path) -> list[str]:
    checkpoint = run / "checkpoints" / "last.ckpt"
    if name == "test":
        return ["test", f"ckpt_path={checkpoint}", f"hydra.run.dir={tmp_path / 'test_out'}"]
    if name == "predict":
        return [
            "predict",
            f"ckpt_path={checkpoint}",
            f"input={image}",
            f"output={tmp_path / 'masks'}",
            f"hydra.run.dir={tmp_path / 'predict_out'}",
        ]
    return ["train", f"resume={run}"]


def set_num_workers(victim: Path):
    def change(state: dict) -> None:
        state["segssl_config"]["data"]["num_workers"] = payload(victim)

    return change


def set_model(victim: Path):
    def change(state: dict) -> None:
        state["hyper_parameters"]["model"] = payload(victim)

    return change


# -- the save_checkpoint payload, in each place, against each command ---------------------------
@pytest.mark.parametrize("name", ["test", "predict", "train resume="])
@pytest.mark.parametrize(
    ("place", "key"),
    [
        (set_model, "hyper_parameters.model._target_"),
        (set_num_workers, "segssl_config.data.num_workers._target_"),
    ],
    ids=["hyper_parameters.model", "segssl_config.data.num_workers"],
)
def test_a_checkpoint_payload_is_refused_and_overwrites_nothing(
    run, victim, image, tmp_path, name, place, key
):
    craft_checkpoints(run, place(victim))
    code, output = segssl(command(name.split()[0], run, tmp_path, image), tmp_path)
    assert code != 0, output[-3000:]
    assert f"refusing to build '{key}: {SAVE}'" in output, output[-3000:]
    assert victim.read_bytes() == ORIGINAL
    assert not (tmp_path / "test_out" / "results.json").exists()
    assert not (tmp_path / "masks").exists()
    assert not (run / "results.json").exists()


def test_a_run_config_payload_in_its_callbacks_is_refused_by_resume(run, victim, tmp_path):
    config = run / ".hydra" / "config.yaml"
    stored = OmegaConf.load(config)
    stored.callbacks.evil = payload(victim)
    OmegaConf.save(stored, config)
    before = config.read_bytes()
    code, output = segssl(["train", f"resume={run}"], tmp_path)
    assert code != 0, output[-3000:]
    assert str(config) in output and f"'callbacks.evil._target_: {SAVE}'" in output, output
    assert victim.read_bytes() == ORIGINAL
    assert config.read_bytes() == before


@pytest.mark.parametrize("name", ["test", "predict"])
def test_test_and_predict_never_build_a_run_folders_config(run, victim, image, tmp_path, name):
    """``test`` and ``predict`` rebuild from the checkpoint's checked config alone: the same
    payload in the run folder's callbacks is never built (and the command works)."""
    config = run / ".hydra" / "config.yaml"
    stored = OmegaConf.load(config)
    stored.callbacks.evil = payload(victim)
    OmegaConf.save(stored, config)
    code, output = segssl(command(name, run, tmp_path, image), tmp_path)
    assert code == 0, output[-3000:]
    assert victim.read_bytes() == ORIGINAL


def test_a_payload_in_the_group_choices_of_hydra_yaml_is_refused_by_resume(run, victim, tmp_path):
    """``${hydra:runtime.choices.method}`` is filled in from the run's hydra.yaml; a node there
    reached the built logger through ``${method_name}`` after the config had been checked."""
    config, hydra_yaml = run / ".hydra" / "config.yaml", run / ".hydra" / "hydra.yaml"
    stored = OmegaConf.load(config)
    stored.logger.csv.name = "${method_name}"  # a plain reference: allowed by itself
    OmegaConf.save(stored, config)
    choices = OmegaConf.load(hydra_yaml)
    choices.hydra.runtime.choices.method = payload(victim)
    OmegaConf.save(choices, hydra_yaml)
    code, output = segssl(["train", f"resume={run}"], tmp_path)
    assert code != 0, output[-3000:]
    assert str(hydra_yaml) in output and f"'method_name._target_: {SAVE}'" in output, output
    assert victim.read_bytes() == ORIGINAL


# -- weights and sizes ----------------------------------------------------------------------------
def run_test(checkpoint: Path, out: Path) -> dict:
    return test_command.test(compose_config("test", [f"ckpt_path={checkpoint}"], out))


def test_nan_or_inf_weights_are_refused_by_name(run, image, tmp_path, run_task):
    def poison(state: dict) -> None:
        weights = state["state_dict"]
        floats = [k for k, v in weights.items() if v.is_floating_point()]
        weights[floats[0]] = torch.full_like(weights[floats[0]], float("nan"))
        weights[floats[-1]] = weights[floats[-1]].clone().fill_(float("inf"))
        state["names"] = (floats[0], floats[-1])

    checkpoint = craft_checkpoints(run, poison)
    first, last = torch.load(checkpoint, weights_only=True)["names"]
    refused = rf"{checkpoint}: refused: its weights hold NaN or Inf \({first}, {last}\)"
    with pytest.raises(UntrustedInputError, match=refused):
        run_test(checkpoint, tmp_path / "test_out")
    assert not (tmp_path / "test_out" / "results.json").exists()
    with pytest.raises(UntrustedInputError, match=refused):
        predict_files(checkpoint, image, tmp_path / "masks")
    assert not (tmp_path / "masks").exists()
    with pytest.raises(UntrustedInputError, match="its weights hold NaN or Inf"):
        run_task([f"resume={run}"], name="run")


# address space for a child that the old code made allocate 10**9 classes (22 GB)
MEMORY_CAP = 6 * 2**30


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.mark.parametrize("name", ["test", "predict"])
def test_a_huge_number_of_classes_is_refused_before_anything_is_allocated(
    run, image, tmp_path, name
):
    def huge(state: dict) -> None:
        state["hyper_parameters"]["num_classes"] = 10**9

    craft_checkpoints(run, huge)
    started = time.monotonic()
    code, output = segssl(
        command(name, run, tmp_path, image), tmp_path, preexec_fn=_cap_memory, timeout=120
    )
    assert code != 0
    assert "refusing 'hyper_parameters.num_classes: 1000000000': expected whole numbers" in output
    assert time.monotonic() - started < 90  # an import and a check, no allocation


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("hyper_parameters", "model", "features"), [4, 4, 8, 8, 16, 10**8]),
        (("hyper_parameters", "evaluation", "image_size"), 10**6),
        (("segssl_config", "data", "image_size"), 10**6),
        (("segssl_config", "data", "synthetic", "slices_per_volume"), 10**9),
    ],
)
def test_other_sizes_from_a_checkpoint_are_range_checked(run, tmp_path, where, value):
    def change(state: dict) -> None:
        node = state
        for name in where[:-1]:
            node = node[name]
        node[where[-1]] = value

    checkpoint = craft_checkpoints(run, change)
    with pytest.raises(UntrustedInputError, match=rf"refusing '{'.'.join(where)}: "):
        run_test(checkpoint, tmp_path / "test_out")


# -- pickled payloads -----------------------------------------------------------------------------
class Shell:
    """Unpickling this object would run a shell command (``os.system``): what torch's own
    error calls "unsupported GLOBAL posix.system", which segssl used to report only as a
    file it "cannot read as a PyTorch checkpoint"."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("form", ["torch.save", "bare pickle", "legacy torch.save"])
def test_a_pickled_payload_is_refused_saying_it_holds_pickled_objects(run, image, tmp_path, form):
    marker = tmp_path / "marker"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state["segssl_config"]["notes"] = Shell(marker)
    evil = tmp_path / "evil.ckpt"
    if form == "bare pickle":
        evil.write_bytes(pickle.dumps(state, protocol=4))
    else:
        torch.save(state, evil, _use_new_zipfile_serialization=form == "torch.save")
    said = rf"{evil}: refused: it holds pickled Python objects \(posix\.system\)"
    with pytest.raises(UntrustedInputError, match=said):
        run_test(evil, tmp_path / "test_out")
    with pytest.raises(UntrustedInputError, match=said):
        predict_files(evil, image, tmp_path / "masks")
    assert not marker.exists()


def test_resume_refuses_a_pickled_checkpoint_instead_of_skipping_to_an_older_one(
    run, tmp_path, run_task
):
    marker = tmp_path / "marker"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    newer = copy.deepcopy(state)
    newer["global_step"] = state["global_step"] + 1
    newer["loops"] = Shell(marker)
    latest = run / "checkpoints" / "latest.ckpt"
    torch.save(newer, latest)
    with pytest.raises(UntrustedInputError, match=rf"{latest}: refused: it holds pickled Python"):
        run_task([f"resume={run}"], name="run")
    assert not marker.exists()
    assert (run / "checkpoints" / "last.ckpt").stat().st_size > 0
    assert not (run / "results.json").exists()
    assert not list((run / ".hydra").glob("resume_*"))  # nothing resumed


def test_the_crafted_run_uncrafted_still_tests(run, tmp_path):
    """The control: what the tests above refuse is what they crafted, not the run."""
    summary = run_test(run / "checkpoints" / "last.ckpt", tmp_path / "test_out")
    assert summary["models"]["net"]["num_cases"] > 0
