"""Issue 24, messages: a known user mistake ends the command with a short message naming the key
or file and what to do, exit code 1 and no traceback; ``--verbose`` or ``HYDRA_FULL_ERROR=1``
show the traceback. A mistyped key gets a "did you mean" from the config's own keys, not
Hydra's "use +key=value" (which would add a key nothing reads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segssl.cli import main
from tests.conftest import segssl_env
from tests.helpers.cli import run_cli

# data that fail once the run has started (the ACDC layout, a folder that is not there)
MISSING = ["data=acdc", "logger=none"]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Commands start in ``tmp_path`` (their outputs/ there), errors in their short form."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGSSL_OUTPUT_DIR", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("SEGSSL_VERBOSE", raising=False)
    return tmp_path


def message_lines(out: str) -> list[str]:
    """The lines of the error itself (not the log lines of a run that started)."""
    return [line for line in out.splitlines() if line.startswith("segssl train:")]


def test_a_missing_data_root_is_one_line_naming_the_key(in_tmp, capsys):
    code, out = run_cli(["train", *MISSING, "data.root=/nope"], capsys)
    assert code == 1 and "Traceback" not in out, out
    (line,) = message_lines(out)
    assert "/nope" in line and "data.root=PATH" in line


@pytest.mark.parametrize("data", ["data=acdc", "data=synthetic"])
def test_an_empty_data_root_says_it_is_empty(in_tmp, capsys, data):
    # it was refused for a list file not found in the working directory (Path("") is "."),
    # and the synthetic data were written into the working directory
    code, out = run_cli(["train", data, "logger=none", "data.root="], capsys)
    assert code == 1 and "Traceback" not in out, out
    (line,) = message_lines(out)
    assert "data.root is empty" in line and "data.root=PATH" in line
    assert "split list" not in out
    assert sorted(p.name for p in in_tmp.iterdir()) == ["outputs"]


def test_a_mistyped_key_gets_did_you_mean_from_the_config(in_tmp, capsys):
    code, out = run_cli(["train", "trainer.max_step=5"], capsys)
    assert code == 1 and "Traceback" not in out, out
    assert out.strip().splitlines() == [
        "segssl train: trainer.max_step=5: trainer has no setting 'max_step'; "
        "did you mean trainer.max_steps=5?"
    ]
    assert "+trainer.max_step" not in out  # Hydra's advice would add a key nothing reads
    assert not (in_tmp / "outputs").exists()  # refused before any run folder


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("metod=bcp", "did you mean method=bcp?"),  # a group's name
        ("data.rooot=x", "did you mean data.root=x?"),
        ("method=dsiaf", "did you mean method=dsaif?"),  # a group's option
        ("+experiment=acdcc", "did you mean +experiment=acdc?"),
        ("trainer.zzz=1", "its settings: accelerator,"),  # nothing close: what there is
    ],
)
def test_config_typos_name_what_the_config_has(in_tmp, capsys, override, expected):
    code, out = run_cli(["train", override, "--cfg", "job"], capsys)
    assert code == 1 and "Traceback" not in out, out
    (line,) = message_lines(out)
    assert line.startswith(f"segssl train: {override}: ") and expected in line


def test_additions_and_group_choices_still_compose(in_tmp, capsys):
    code, out = run_cli(["train", "+trainer.max_step=5", "method=cps", "--cfg", "job"], capsys)
    assert code == 0 and "max_step: 5" in out and "segssl train:" not in out


def test_a_missing_required_setting_names_it(in_tmp, capsys):
    code, out = run_cli(["predict", "input=x.png", "output=masks"], capsys)
    assert code == 1 and "Traceback" not in out, out
    assert "segssl predict: ckpt_path is not set: give ckpt_path=" in out


@pytest.mark.parametrize("how", ["--verbose", "HYDRA_FULL_ERROR=1"])
def test_verbose_shows_the_traceback(in_tmp, capsys, monkeypatch, how):
    from hydra.errors import ConfigCompositionException

    from segssl.data.readers import DataError

    flag = ["--verbose"] if how == "--verbose" else []
    if not flag:
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    # raised as they are: Python prints the traceback
    with pytest.raises(DataError, match="data root not found: /nope"):
        main(["train", *MISSING, "data.root=/nope", *flag])
    with pytest.raises(ConfigCompositionException, match="trainer.max_step"):
        main(["train", "trainer.max_step=5", *flag])


def test_the_error_switches_are_restored_after_the_command(in_tmp, capsys):
    import os

    run_cli(["train", "trainer.max_step=5"], capsys)
    assert "HYDRA_FULL_ERROR" not in os.environ and "SEGSSL_VERBOSE" not in os.environ


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning: 15-40 s on 2 busy cores
def test_the_console_shows_no_traceback(tmp_path):
    """The whole console output of a real ``python -m segssl`` process."""
    env = segssl_env()
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("SEGSSL_OUTPUT_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "segssl", "train", *MISSING, "data.root=/nope"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and 'File "' not in done.stderr, done.stderr
    assert "segssl train: data root not found: /nope (set data.root=PATH)" in done.stderr
    assert list((tmp_path / "outputs" / "train" / "runs").iterdir()) == []  # cleaned up
