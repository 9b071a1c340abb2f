"""Where the Hydra configs live, whether segssl runs from a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The configs shipped inside the package (``segssl/conf``, a wheel install), else the
    repository's top-level ``conf/`` (a checkout or an editable install).

    The packaged copy is tried first: in a wheel install the folder beside the package is
    site-packages, where a ``conf/`` may belong to someone else. The checkout's ``conf/`` counts
    only beside the project's ``pyproject.toml``.
    """
    here = Path(__file__).resolve().parent
    packaged, checkout = here / "conf", here.parent / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    if (checkout / "train.yaml").is_file() and (here.parent / "pyproject.toml").is_file():
        return checkout
    raise FileNotFoundError(
        f"segssl configs not found: expected train.yaml in {packaged} (installed wheel) or in "
        f"{checkout} (checkout); reinstall segssl, or run from a complete checkout"
    )
