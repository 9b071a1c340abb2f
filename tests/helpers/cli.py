"""Running ``python -m segssl`` in the test's own process."""

from __future__ import annotations

import pytest

from segssl.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``python -m segssl ARGS`` in this process: its exit code and what it printed."""
    code = 0
    try:
        main(args)
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    out = capsys.readouterr()
    return code, out.out + out.err
