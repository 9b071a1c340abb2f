"""The command table in ``segssl/cli.py``: every row resolves, drives ``--help`` and dispatch."""

from __future__ import annotations

import pytest

from segssl.cli import COMMANDS, Command, load, main
from segssl.runs.hydra_app import config_dir

CALLS: list[list[str]] = []


def _record(argv: list[str]) -> None:
    CALLS.append(list(argv))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_resolves_to_a_callable_and_its_config(name):
    command = COMMANDS[name]
    assert command.entry.startswith("segssl.commands."), command.entry
    assert callable(load(command.entry))
    if command.before_hydra:
        assert callable(load(command.before_hydra))
    if command.config is not None:
        assert (config_dir() / f"{command.config}.yaml").is_file()


def test_help_lists_every_command_once(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("commands:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == list(COMMANDS)


def test_unknown_command_exits_2_with_the_list(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trian", "method=cps"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "predict" in err


def test_argparse_command_gets_its_arguments(monkeypatch):
    monkeypatch.setitem(COMMANDS, "probe", Command(f"{__name__}:_record", None, "probe"))
    CALLS.clear()
    main(["probe", "a", "--b"])
    assert CALLS == [["a", "--b"]]


def test_ddp_child_is_dispatched_to_its_parents_command(monkeypatch):
    # Lightning re-launches ``python -m segssl`` with the overrides only
    monkeypatch.setitem(COMMANDS, "probe", Command(f"{__name__}:_record", None, "probe"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("SEGSSL_COMMAND", "probe")
    CALLS.clear()
    main(["seed=3", "trainer.max_steps=2"])
    assert CALLS == [["seed=3", "trainer.max_steps=2"]]


def test_without_segssl_command_a_child_is_not_guessed(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("SEGSSL_COMMAND", raising=False)
    with pytest.raises(SystemExit):
        main(["seed=3"])


def test_train_checks_run_before_hydra_and_skip_in_ddp_children(tmp_path, monkeypatch, capsys):
    from segssl.runs.run import check_before_hydra

    missing = tmp_path / "no_such_run"
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SystemExit) as exc:
        check_before_hydra([f"resume={missing}"])
    assert exc.value.code == 1
    assert capsys.readouterr().err.startswith("segssl train: ")
    assert not missing.exists()
    monkeypatch.setenv("LOCAL_RANK", "1")  # the parent checked and owns the folder
    assert check_before_hydra([f"resume={missing}"]) == [f"resume={missing}"]


def test_verbose_is_taken_off_the_overrides_and_passed_to_ddp_children(monkeypatch):
    from segssl.cli import VERBOSE_ENV, take_verbose

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert take_verbose(["seed=1", "--verbose"]) == (True, ["seed=1"])
    assert take_verbose(["seed=1"]) == (False, ["seed=1"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # Hydra's own switch counts
    assert take_verbose(["seed=1"]) == (True, ["seed=1"])
    # a DDP child inherits the HYDRA_FULL_ERROR=1 its parent set for Hydra: the parent's choice
    monkeypatch.setenv(VERBOSE_ENV, "0")
    assert take_verbose(["seed=1"]) == (False, ["seed=1"])
