"""How a report names its groups: by what the user varied.

A group's label always says its method and labeled count, then the settings the user set on a
command line (the run folder's ``.hydra/overrides.yaml``, and the ``overrides.yaml`` of each
``train resume=`` in ``.hydra/resume_*/``) whose value differs between the groups: a config
group by its choice (``filter=none``, ``model=vnet``), any other key by its value
(``trainer.max_steps=300``). A setting nobody put on a command line (a changed default, a value
that follows another one, such as ``method.rampup_steps: ${trainer.max_steps}``) is not in the
labels; where groups also differ in such a setting without a labelled choice (``method=``,
``filter=``...) to explain it, a note names it with each group's value. Only when the chosen
keys cannot tell two groups apart (runs from before ``.hydra/`` was kept, or a default changed
between sweeps) do the fewest other differing keys join the labels, the keys every group has
and that follow no other first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segssl.commands.report.config_keys import LOCATION_KEYS, flat_values

# group choices and the config keys that name them in runs without .hydra/hydra.yaml
CHOICE_KEYS = {
    "method": ("method_name",),
    "filter": ("filter_name", "filter._target_"),
    "experiment": ("experiment_name",),
    "data": ("data.name",),
}
# set on command lines, but not what a run is: never labels
NOT_LABELS = ("seed", "resume", "hydra", "paths", "logger", "hparams_search", "local")
ALWAYS = ("method", "data.labeled")
PREFERRED = ("filter", "experiment", "data", "model")
# a value that only repeats another key: ``${trainer.max_steps}``
_REFERENCE = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")
NOTE_KEYS_SHOWN = 8


@dataclass(frozen=True)
class LabelKey:
    """A part of a label: a config group's choice (``config`` None) or a config key."""

    name: str
    config: str | None = None


@dataclass
class RunFacts:
    """What a run folder's ``.hydra/`` says beyond the resolved config: the keys set on its
    command lines (None when the folder has no overrides.yaml), its group choices, and the
    keys whose value is an interpolation (key -> the key it repeats, or "" for expressions)."""

    overrides: list[str] | None
    choices: dict[str, str]
    derived: dict[str, str]


def read_facts(folder: Path) -> RunFacts:
    """The ``.hydra/`` files of a run folder; unreadable or absent files give no facts."""
    hydra = folder / ".hydra"
    overrides = _yaml(hydra / "overrides.yaml")
    keys: list[str] | None = None
    if isinstance(overrides, list):
        keys = [k for k in (override_key(str(o)) for o in overrides) if k]
        for record in sorted(hydra.glob("resume_*/overrides.yaml")):
            more = _yaml(record)
            if isinstance(more, list):
                keys += [k for k in (override_key(str(o)) for o in more) if k]
    loaded = _yaml(hydra / "hydra.yaml")
    choices = {}
    if isinstance(loaded, dict):
        found = ((loaded.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
        if isinstance(found, dict):
            choices = {str(k): str(v) for k, v in found.items()}
    config = _yaml(hydra / "config.yaml")
    derived: dict[str, str] = {}
    if isinstance(config, dict):
        for key, value in flat_values(config).items():
            if isinstance(value, str) and "${" in value:
                match = _REFERENCE.match(value)
                derived[key] = match.group(1) if match else ""
    return RunFacts(keys, choices, derived)


def override_key(text: str) -> str | None:
    """The key an override sets (``+experiment=acdc`` -> ``experiment``), or None for those
    that say where things go or how they are logged, not what was run."""
    key = text.split("=", 1)[0].lstrip("+~").split("@", 1)[0].strip()
    if not key or re.split(r"[./]", key)[0] in NOT_LABELS:  # hydra/launcher=... too
        return None
    return None if key.split(".")[-1] in LOCATION_KEYS else key


def label_groups(groups: Sequence[Any]) -> list[str]:
    """Set each group's ``label`` and ``label_parts``; return the notes on differing settings
    not in the labels (see the module text)."""
    facts = [[read_facts(r.path.parent) for r in g.runs] for g in groups]
    choices = [next((f.choices for f in fs if f.choices), {}) for fs in facts]
    derived: dict[str, str] = {}
    swept: dict[str, None] = {}
    for fs in facts:
        for fact in fs:
            derived.update(fact.derived)
            swept.update(dict.fromkeys(fact.overrides or []))
    known_groups = set().union(*(c.keys() for c in choices)) | set(CHOICE_KEYS)

    def key_of(name: str) -> LabelKey:
        return LabelKey(name) if name in known_groups and "." not in name else LabelKey(name, name)

    def value(index: int, key: LabelKey) -> str:
        group = groups[index]
        if key.config is not None:
            return _shown(key.config, group.setting(key.config))
        if key.name in choices[index]:
            return choices[index][key.name]
        for config in CHOICE_KEYS.get(key.name, ()) + (f"{key.name}_name", f"{key.name}.name"):
            if group.setting(config) is not None:
                return _shown(config, group.setting(config))
        return "None"

    keys = [key_of(k) for k in ALWAYS]
    candidates = [key_of(k) for k in PREFERRED if k in swept]
    candidates += [key_of(k) for k in swept if k not in PREFERRED and k not in ALWAYS]
    for key in candidates:
        if key not in keys and len({value(i, key) for i in range(len(groups))}) > 1:
            keys.append(key)
    labels = _labels(groups, keys, value)
    if len(set(labels)) < len(labels):  # settings nobody set tell some groups apart
        for key in _fallback_keys(groups, keys, derived):
            extended = [(*old, value(i, key)) for i, old in enumerate(labels)]
            if len(set(extended)) > len(set(labels)):
                keys.append(key)
                labels = extended
            if len(set(labels)) == len(labels):
                break
    for i, group in enumerate(groups):
        group.label_parts = {k.name: value(i, k) for k in keys}
        group.label = " ".join(f"{k}={v}" for k, v in group.label_parts.items())
    return _notes(groups, keys, value, derived)


def _labels(groups: Sequence[Any], keys: list[LabelKey], value) -> list[tuple[str, ...]]:
    return [tuple(value(i, k) for k in keys) for i in range(len(groups))]


def _fallback_keys(
    groups: Sequence[Any], keys: list[LabelKey], derived: dict[str, str]
) -> list[LabelKey]:
    """Config keys that differ between groups and are not labels yet: the usual names first,
    then keys every group has and that repeat no other key, then the rest, each by name."""
    taken = {k.config for k in keys} | {c for k in keys for c in CHOICE_KEYS.get(k.name, ())}
    present = [set(g.settings) for g in groups]
    differing = sorted(
        k for k in set().union(*present) - taken
        if len({_text(g.setting(k)) for g in groups}) > 1
    )  # fmt: skip
    usual = [k for k in ("filter_name", "filter._target_", "experiment_name", "data.name")
             if k in differing]  # fmt: skip
    everywhere = [
        k for k in differing if all(k in p for p in present) and _source(k, derived) is None
    ]  # fmt: skip
    rest = [k for k in differing if k not in usual and k not in everywhere]
    ordered = list(dict.fromkeys(usual + everywhere + rest))
    return [LabelKey(_LEGACY_NAMES.get(k, k), k) for k in ordered]


_LEGACY_NAMES = {
    "filter_name": "filter",
    "filter._target_": "filter",
    "experiment_name": "experiment",
    "data.name": "data",
}


def _notes(
    groups: Sequence[Any], keys: list[LabelKey], value, derived: dict[str, str]
) -> list[str]:
    """Settings that differ between groups whose labelled choices are the same, are not in the
    labels and do not merely repeat a labelled key: one note listing them with their values."""
    choice_keys = [k for k in keys if k.config is None]
    labelled = {k.config for k in keys if k.config} | {
        c for k in choice_keys for c in CHOICE_KEYS.get(k.name, ())
    }
    clusters: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(groups)):
        clusters.setdefault(tuple(value(i, k) for k in choice_keys), []).append(i)
    found: list[str] = []
    for key in sorted(set().union(*(g.settings for g in groups)) - labelled):
        source = _source(key, derived)
        if source in labelled:
            continue  # follows a labelled key
        involved = [
            members for members in clusters.values()
            if len({_text(groups[i].setting(key)) for i in members}) > 1
        ]  # fmt: skip
        if not involved:
            continue
        shown = "; ".join(
            f"{_shown(key, groups[i].setting(key))} in `{groups[i].label}`"
            for members in involved
            for i in members
        )
        follows = f" (follows `{source}`)" if source else ""
        found.append(f"`{key}`{follows}: {shown}")
    if not found:
        return []
    more = len(found) - NOTE_KEYS_SHOWN
    text = "; ".join(found[:NOTE_KEYS_SHOWN]) + (f"; and {more} more key(s)" if more > 0 else "")
    return [
        "groups also differ in settings that are not in their labels (set on no command line "
        f"that the runs' .hydra/ records, and not following a labelled choice): {text}"
    ]


# -- helpers -----------------------------------------------------------------------------------
def _source(key: str, derived: dict[str, str]) -> str | None:
    """The key that ``key`` repeats (``method.model.features`` of ``method.model: ${model}``
    repeats ``model.features``); "" for an expression, None when it is set itself."""
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in derived:
            source = derived[prefix]
            return ".".join([source, *parts[cut:]]) if source else ""
    return None


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _shown(key: str, value: Any) -> str:
    """A setting as a label shows it: a class path by its last name."""
    text = str(value)
    return text.rsplit(".", 1)[-1] if key.endswith("._target_") else text


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
