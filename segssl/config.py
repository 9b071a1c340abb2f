"""Where the Hydra configs live, whether segssl runs from a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The repo's ``conf/`` next to the package (checkout / editable install), else the copy
    shipped inside the package (``segssl/conf``, wheel install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"segssl configs not found next to {here} (expected conf/train.yaml)")
