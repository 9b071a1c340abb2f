"""Resuming a run folder, part of the ``train`` command (``train resume=RUN_DIR``): its own
config, the checkpoint asked for (or its newest one), its W&B run id, and only the overrides
that do not change what the run is.

A resumed run is the run it continues: method, views, data, model and schedule come from its
``.hydra/config.yaml`` (with the group choices of its ``.hydra/hydra.yaml``) and nothing else.
An override that would change them is refused, listing the keys, before anything is written;
the keys in ``CHANGEABLE`` are applied and recorded in ``.hydra/resume_<time>/`` and in the run
state file."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from segssl.utils.atomic import move, write_text
from segssl.utils.checkpoint_io import checkpoint_problem, verify_checkpoint
from segssl.utils.trust import (
    UntrustedInputError,
    check_checkpoint,
    check_targets,
    load_checkpoint,
    upgrade_targets,
)

log = logging.getLogger(__name__)

RUN_STATE = ".segssl_run.json"

# Overrides a resume may apply: where and how the run computes and reports, never what it is.
# key (or key prefix) -> why it is safe; the README lists the same keys.
CHANGEABLE: dict[str, str] = {
    "trainer.max_steps": "larger values only: extends the run (the poly schedule is stretched)",
    "trainer.accelerator": "where it runs",
    "trainer.devices": "where it runs",
    "trainer.num_nodes": "where it runs",
    "trainer.strategy": "where it runs",
    "trainer.enable_progress_bar": "display",
    "trainer.enable_model_summary": "display",
    "trainer.log_every_n_steps": "logging",
    "logger": "logging (logger=csv|wandb|none and logger.*)",
    "callbacks.progress_bar": "display",
    "callbacks.latest_checkpoint.every_n_train_steps": "how often latest.ckpt is written",
    "data.num_workers": "loader processes",
    "data.root": "the same data at another path (a run folder moved to another machine)",
    "paths.data_dir": "the same data at another path",
    "test": "whether the best checkpoint is tested at the end",
}
# Hydra settings that would put the resumed run somewhere else than its own folder.
_HYDRA_PLACEMENT = ("hydra.run", "hydra.sweep", "hydra.output_subdir", "hydra.job.chdir")
_CHOICE = re.compile(r"\$\{hydra:runtime\.choices\.([^}]+)\}")


class ResumeError(ValueError):
    """A resume that cannot continue the run truthfully."""


@dataclass
class ResumePlan:
    """What a resume continues: the run's own config (with the allowed changes applied)."""

    run_dir: Path
    config: DictConfig
    checkpoint: Path | None  # the file named with resume=, else None (the newest is taken)
    applied: list[str] = field(default_factory=list)


# -- locating the run --------------------------------------------------------------------------
def locate(resume: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(run folder, checkpoint named or None)`` of a ``resume=`` value."""
    target = Path(resume).expanduser().resolve()
    checkpoint = None
    if target.is_file():  # a checkpoint inside the run folder
        checkpoint, target = target, target.parent.parent
    if not (target / ".hydra" / "config.yaml").is_file():
        raise ResumeError(f"resume={target}: not a segssl run folder (no .hydra/config.yaml)")
    return target, checkpoint


def resume_value(argv: list[str]) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    value = values[-1] if values else None
    return None if value in (None, "", "null", "None") else value


def current_config_path(run_dir: Path) -> Path:
    """The config the run last ran with: the record of its latest resume (which may have
    extended it), else the first start's ``.hydra/config.yaml``."""
    for entry in reversed(read_run_state(run_dir).get("resumes", [])):
        record = run_dir / str(entry.get("record", "")) / "config.yaml"
        if entry.get("record") and record.is_file():
            return record
    return run_dir / ".hydra" / "config.yaml"


def saved_config(run_dir: Path) -> DictConfig:
    """The run's own config (``current_config_path``) with its group choices in place of
    ``${hydra:runtime.choices.*}`` (else they resolve to the resuming command's defaults);
    refused if it names a callable off the allow-list."""
    path = current_config_path(run_dir)
    try:
        saved = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ResumeError(f"{path}: cannot read the run's config ({err})") from err
    check_targets(saved, path)
    choices = saved_choices(run_dir)
    container = upgrade_targets(OmegaConf.to_container(saved, resolve=False))
    container = _substitute_choices(container, choices, path)
    return OmegaConf.create(container)


def saved_choices(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices", default=None)
    return dict(OmegaConf.to_container(choices)) if choices is not None else {}


def _substitute_choices(node: Any, choices: dict[str, Any], source: Path) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_choices(v, choices, source) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_choices(v, choices, source) for v in node]
    if isinstance(node, str) and _CHOICE.search(node):

        def choice(match: re.Match) -> str:
            group = match.group(1)
            if group not in choices:
                raise ResumeError(
                    f"{source}: '{node}' needs the run's choice of '{group}', which its "
                    f".hydra/hydra.yaml does not record"
                )
            return str(choices[group])

        whole = _CHOICE.fullmatch(node)
        if whole and whole.group(1) in choices:
            return choices[whole.group(1)]  # keeps its type (e.g. null)
        return _CHOICE.sub(choice, node)
    return node


# -- which overrides a resume accepts ----------------------------------------------------------
def user_overrides(argv: list[str]) -> list[str]:
    """The Hydra overrides among command-line arguments, without ``resume=``."""
    return [a for a in argv if "=" in a and not a.startswith(("-", "resume="))]


def _changeable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in CHANGEABLE)


def _same(a: Any, b: Any) -> bool:
    if OmegaConf.is_config(a):
        a = OmegaConf.to_container(a, resolve=False)
    return a == b or str(a) == str(b)


def check_overrides(run_dir: Path, saved: DictConfig, overrides: list[str]) -> list[str]:
    """The overrides a resume applies; raises ``ResumeError`` listing every override that would
    change what the run is (values equal to the run's own are accepted and change nothing)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # noqa: BLE001 - Hydra's own message names the override
        raise ResumeError(f"resume={run_dir}: cannot parse the overrides ({err})") from err
    choices = saved_choices(run_dir)
    conflicts, applied = [], []
    for text, override in zip(overrides, parsed, strict=True):
        key = override.key_or_group
        if key.startswith(("hydra.", "hydra/")):
            placed = key.startswith(_HYDRA_PLACEMENT)
            if placed and not (key == "hydra.run.dir" and _same_dir(override.value(), run_dir)):
                conflicts.append(f"{text} (a resumed run stays in {run_dir})")
            continue
        if override.is_sweep_override():
            conflicts.append(f"{text} (a resume continues one run, not a sweep)")
        elif override.is_delete():
            conflicts.append(f"{text} (a resume cannot delete a setting of the run)")
        elif _changeable(key):
            if key == "trainer.max_steps":
                old = OmegaConf.select(saved, key, default=None)
                new = override.value()
                if isinstance(old, int) and isinstance(new, int) and new < old:
                    conflicts.append(f"{text} (run: {old}; only a larger value extends a run)")
                    continue
            applied.append(text)
        else:
            if key in choices or "/" in key:
                old = choices.get(key)
            else:
                old = _stored(saved, key)
            if not _same(old, override.value()):
                conflicts.append(f"{text} (run: {old})")
    if conflicts:
        raise ResumeError(
            f"resume={run_dir}: these overrides would change what the run is, and a resumed run "
            f"keeps its own method, views, data, model and schedule: {'; '.join(conflicts)}. "
            f"A resume accepts: {', '.join(CHANGEABLE)} (trainer.max_steps only larger). To run "
            f"something else, start a new run without resume=."
        )
    return applied


def _stored(saved: DictConfig, key: str) -> Any:
    """The run's value of ``key``, resolved when it can be outside the run's Hydra context."""
    try:
        return OmegaConf.select(saved, key, default="<absent>", throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation of the Hydra context: compare its text
        node = OmegaConf.to_container(saved, resolve=False)
        for part in key.split("."):
            node = node.get(part, "<absent>") if isinstance(node, dict) else "<absent>"
        return node


def _same_dir(value: Any, run_dir: Path) -> bool:
    return isinstance(value, str) and Path(value).expanduser().resolve() == run_dir


def extends(run_dir: Path, saved: DictConfig, applied: list[str]) -> bool:
    """Whether the applied overrides raise ``trainer.max_steps`` above the run's own."""
    old = OmegaConf.select(saved, "trainer.max_steps", default=None)
    for text in applied:
        key, _, value = text.partition("=")
        if key.lstrip("+") == "trainer.max_steps":
            try:
                return isinstance(old, int) and int(value) > old
            except ValueError:
                return False
    return False


def refuse_finished(run_dir: Path, saved: DictConfig, applied: list[str]) -> None:
    if (run_dir / "results.json").is_file() and not extends(run_dir, saved, applied):
        steps = OmegaConf.select(saved, "trainer.max_steps", default="?")
        raise ResumeError(
            f"resume={run_dir}: this run is finished (results.json); resuming it would only "
            f"repeat it. Extend it with trainer.max_steps=N larger than {steps}, or start a new "
            f"run without resume=."
        )


def resume_overrides(argv: list[str]) -> list[str]:
    """Checked before Hydra starts (so nothing is written when a resume is refused): the run
    folder, its stored config, the overrides and the folder's owner. Returns the Hydra overrides
    that put the job into its own folder; the task records this start itself (not Hydra, whose
    snapshot would show the resuming command's defaults)."""
    from segssl.utils.run_lock import RunFolderBusy, busy_message, live_holder

    value = resume_value(argv)
    if value is None:
        return []
    run_dir, _ = locate(value)
    saved = saved_config(run_dir)
    applied = check_overrides(run_dir, saved, user_overrides(argv))
    refuse_finished(run_dir, saved, applied)
    holder = live_holder(run_dir)
    if holder is not None:
        raise RunFolderBusy(busy_message(run_dir, holder))
    return [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


# -- inside the task ---------------------------------------------------------------------------
def plan_resume(cfg: DictConfig, output_dir: Path, overrides: list[str]) -> ResumePlan:
    """The run's own config with the allowed overrides of ``cfg`` (the composed config of the
    resuming command) applied; refuses before anything is built or written."""
    run_dir, checkpoint = locate(cfg.resume)
    if run_dir != output_dir.resolve():
        raise ResumeError(
            f"resume={cfg.resume}: the run folder is {run_dir}, but this job writes into "
            f"{output_dir}; do not combine resume= with hydra.run.dir"
        )
    saved = saved_config(run_dir)
    applied = check_overrides(run_dir, saved, [o for o in overrides if not o.startswith("resume=")])
    refuse_finished(run_dir, saved, applied)
    for text in applied:
        key = text.partition("=")[0].lstrip("+")
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=False)
        with open_dict(saved):
            OmegaConf.update(saved, key, value, merge=False, force_add=True)
    with open_dict(saved):
        saved.resume = str(checkpoint or run_dir)
    return ResumePlan(run_dir, saved, checkpoint, applied)


def resumed_seed(seed: int, step: int) -> int:
    """The seed of a run resumed at ``step``: a stream of its own (data order, augmentation,
    mixing boxes, dropout) that is still a function of the run's seed and the checkpoint.
    Reseeding with the run's seed would replay step 0's stream, and a job preempted every k
    steps would train on its first k batches again and again. Not a bit-identical replay of
    the uninterrupted run: the loaders do not store their position."""
    if step == 0:
        return seed
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def checkpoint_to_resume(plan: ResumePlan) -> tuple[Path, int]:
    """The checkpoint named with ``resume=``, else the newest; read with ``weights_only=True``
    and its stored config checked against the allow-list before anything is built. Returns
    the file and its global step."""
    path = plan.checkpoint or latest_checkpoint(plan.run_dir)
    verify_checkpoint(path)
    checkpoint = load_checkpoint(path)
    stored = check_checkpoint(checkpoint, path)
    ours = OmegaConf.select(plan.config, "method._target_", default=None)
    theirs = (stored.get("method") or {}).get("_target_")
    if ours and theirs and ours != theirs:
        raise ResumeError(
            f"{path}: written by a {theirs} run, but {plan.run_dir / '.hydra/config.yaml'} "
            f"is a {ours} run; a run folder holds the checkpoints of one run"
        )
    return path, int(checkpoint.get("global_step", 0))


def latest_checkpoint(run_dir: Path) -> Path:
    """The checkpoint with the highest global step among ``checkpoints/*.ckpt`` (newest file on
    a tie); a damaged one is skipped with a warning, one holding code is refused."""
    candidates = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if not candidates:
        raise ResumeError(f"resume={run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
    steps: dict[Path, int] = {}
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is not None:
            log.warning("Skipping damaged checkpoint %s: %s", path, problem)
            continue
        try:
            steps[path] = int(load_checkpoint(path)["global_step"])
        except UntrustedInputError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            log.warning("Skipping unreadable checkpoint %s: %s", path, err)
    if not steps:
        raise ResumeError(f"resume={run_dir}: no readable checkpoint in {run_dir / 'checkpoints'}")
    return max(steps, key=lambda p: (steps[p], p.stat().st_mtime))


def record_resume(plan: ResumePlan, checkpoint: Path, global_step: int | None, seed: int) -> Path:
    """Write this start's effective config and applied overrides to ``.hydra/resume_<time>/``
    and append it, with the seed it continues on, to the run state; a finished run's results
    move there too (it is extended)."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folder = plan.run_dir / ".hydra" / f"resume_{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.yaml", OmegaConf.to_yaml(plan.config))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(plan.applied)))
    for path in [plan.run_dir / "results.json", *plan.run_dir.glob("per_case*.csv")]:
        if path.is_file():
            move(path, folder / path.name)
    state = read_run_state(plan.run_dir)
    entry = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "checkpoint": str(checkpoint.relative_to(plan.run_dir))
        if checkpoint.is_relative_to(plan.run_dir)
        else str(checkpoint),
        "global_step": global_step,
        "seed": seed,
        "overrides": plan.applied,
        "record": str(folder.relative_to(plan.run_dir)),
    }
    write_run_state(plan.run_dir, resumes=[*state.get("resumes", []), entry])
    return folder


# -- run state ---------------------------------------------------------------------------------
def read_run_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_STATE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError as err:
        raise ResumeError(f"{path}: damaged run state file ({err})") from err
    return state if isinstance(state, dict) else {}


def write_run_state(run_dir: Path, **values: Any) -> None:
    state = read_run_state(run_dir) | values
    write_text(run_dir / RUN_STATE, json.dumps(state, indent=2))
