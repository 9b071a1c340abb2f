"""The options of the project's config groups, found by globbing ``conf/`` (as
lightning-hydra-template's tests do), so that a new method, model or filter file is tested with
no list to edit."""

from __future__ import annotations

from segssl.runs.hydra_app import config_dir


def group_options(group: str) -> list[str]:
    """Options of a config group, sorted; files starting with ``_`` are shared parts
    (``method/_base.yaml``), not options."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if p.stem[0] != "_")
