"""Run configs as flat dotted keys, and the keys that say where things are rather than what was
run: shared by grouping runs (``runs.py``) and labelling the groups (``labels.py``)."""

from __future__ import annotations

import json
from typing import Any

# keys that say where things are, not what was run: never split groups
LOCATION_KEYS = {"root", "save_dir", "dirpath", "cache_dir", "output_dir", "default_root_dir"}


def flat_values(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> the values of the leaves of a nested config."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_values(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def flatten(config: dict[str, Any]) -> dict[str, str]:
    """Dotted keys -> JSON values (hashable and comparable)."""
    return {k: json.dumps(v, sort_keys=True) for k, v in flat_values(config).items()}
