"""A plan as a Hydra experiment (``+experiment=NAME``) or as the equivalent override line."""

from __future__ import annotations

import re
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segssl.planning.planner import Plan

# plan keys that choose a config group rather than set a value
GROUPS = ("model", "evaluation", "method")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def settings(plan: Plan, root: str) -> dict[str, Any]:
    """The values the experiment sets (dotted key -> value), data.root first."""
    values: dict[str, Any] = {"data.root": root}
    values.update({k: v for k, v in plan.choices.items() if k not in GROUPS})
    return values


def experiment_yaml(plan: Plan, root: str, plan_file: Path | None) -> str:
    """The experiment file: each choice's reason as a comment, then the config."""
    nested = OmegaConf.create({})
    for key, value in settings(plan, root).items():
        OmegaConf.update(nested, key, value, force_add=True)
    nested.experiment_name = plan.name
    nested.tags = [plan.name, "${method_name}", "labeled=${data.labeled}"]
    body = OmegaConf.to_yaml(nested, sort_keys=False)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# @package _global_",
        f"# Planned by `segssl plan` on {created} from {root}",
        f"# (fingerprint and reasons: {plan_file})." if plan_file else "#",
        f"# Train: python -m segssl train +experiment={plan.name}   (on a GPU: add trainer=gpu)",
        "# Any value can still be overridden on the command line. Why each value:",
    ]
    for key, reason in plan.reasons.items():
        lines.append(f"#   {key}: {reason}")
    lines += [
        "defaults:",
        "  - override /data: folder",
        *(f"  - override /{group}: {plan.choices[group]}" for group in GROUPS),
        "",
        body,
    ]
    return "\n".join(lines)


def override_line(plan: Plan, root: str) -> str:
    """``python -m segssl train ...`` with the plan as command-line overrides."""
    words = ["python", "-m", "segssl", "train", "data=folder"]
    words += [f"{group}={plan.choices[group]}" for group in GROUPS]
    words += [f"{key}={_hydra_value(value)}" for key, value in settings(plan, root).items()]
    return " ".join(shlex.quote(w) for w in words)


def _hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9_./-]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)
