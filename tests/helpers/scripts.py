"""Running one of the repository's ``scripts/`` in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO, segssl_env


def run_script(script: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``bash scripts/SCRIPT ARGS`` from ``cwd`` with segssl's test environment plus ``env``."""
    return subprocess.run(
        ["bash", str(REPO / "scripts" / script), *args],
        cwd=cwd,
        env=segssl_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
    )
