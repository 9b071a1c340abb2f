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
import shutil
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
# checkpoints/abandoned_<time>/: the checkpoints past the step a resume went back to
ABANDONED = "abandoned_"

# Overrides a resume may apply: where and how the run computes and reports, never what it is.
# key (or key prefix) -> why it is safe; docs/resume.md lists the same keys.
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
    "data.on_device": "where the training set is held (augmentation of the same distributions)",
    "data.device_memory_fraction": "where the training set is held",
    "callbacks.latest_checkpoint.train_time_interval": "how often latest.ckpt is written",
    "callbacks.model_checkpoint.last_every_validation": "how often last.ckpt is written",
    "callbacks.validation_overlays": "display (overlay PNGs of validation volumes)",
    "evaluation.distances_every": "how often validation also computes HD95/ASD (not selection)",
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
    """``(run folder, checkpoint named or None)`` of a ``resume=`` value: a run folder, a file
    in its ``checkpoints/``, or one in a branch left there (``checkpoints/abandoned_*/``)."""
    target = Path(resume).expanduser().resolve()
    checkpoint = None
    if target.is_file():  # a checkpoint inside the run folder
        checkpoint, target = target, target.parent.parent
        if target.name == "checkpoints" and checkpoint.parent.name.startswith(ABANDONED):
            target = target.parent
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
    check_targets(container, f"{path} with the choices of {run_dir / '.hydra' / 'hydra.yaml'}")
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
    from segssl.runs.lock import RunFolderBusy, busy_message, live_holder

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
    if plan.checkpoint is not None and plan.checkpoint.parent.name.startswith(ABANDONED):
        branch_point(plan.run_dir, plan.checkpoint.parent)  # refused unless recorded
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


def checkpoint_steps(
    run_dir: Path, folder: Path | None = None
) -> tuple[dict[Path, int], dict[Path, str]]:
    """The global step of each readable checkpoint in ``checkpoints/`` (or ``folder``; a damaged
    or unreadable one is skipped with a warning), and the checkpoints refused because they hold
    pickled Python objects, with the reason."""
    steps: dict[Path, int] = {}
    refused: dict[Path, str] = {}
    for path in sorted((folder or run_dir / "checkpoints").glob("*.ckpt")):
        problem = checkpoint_problem(path)
        try:
            # weights_only=True: reading a damaged or crafted file runs nothing, and tells a
            # pickle that would build objects (refused) from a damaged file (skipped)
            steps[path] = int(load_checkpoint(path)["global_step"])
        except UntrustedInputError as err:
            refused[path] = str(err)
        except (ValueError, KeyError, TypeError) as err:
            if problem is not None:
                log.warning("Skipping damaged checkpoint %s: %s", path, problem)
            else:
                log.warning("Skipping unreadable checkpoint %s: %s", path, err)
        else:
            if problem is not None:  # loads, yet a record fails its CRC check
                log.warning("Skipping damaged checkpoint %s: %s", path, problem)
                del steps[path]
    return steps, refused


def _listing(run_dir: Path, steps: dict[Path, int]) -> str:
    return ", ".join(
        f"{p.relative_to(run_dir)} (step {s})"
        for p, s in sorted(steps.items(), key=lambda item: (-item[1], item[0].name))
    )


def latest_checkpoint(run_dir: Path) -> Path:
    """The checkpoint with the highest global step among ``checkpoints/*.ckpt`` (newest file on
    a tie), on the branch the user last chose (a resume from an older checkpoint moves the
    checkpoints past it aside, see ``leave_branch``). A damaged checkpoint is skipped with a
    warning; one holding pickled objects is refused (no silent fallback to an older one);
    checkpoints of two branches side by side (left by older versions) are refused, listed."""
    checkpoints = run_dir / "checkpoints"
    if not any(checkpoints.glob("*.ckpt")):
        raise ResumeError(f"resume={run_dir}: no checkpoint in {checkpoints}")
    steps, refused = checkpoint_steps(run_dir)
    if refused:
        first, reason = next(iter(refused.items()))
        more = [p.name for p in list(refused)[1:]]
        others = f" (so are {', '.join(more)})" if more else ""
        instead = (
            f"The checkpoints that read back are {_listing(run_dir, steps)}; to continue from "
            f"one of them, name it: resume={checkpoints}/<file> (and delete the refused file)."
            if steps
            else "No other checkpoint of this run reads back."
        )
        raise UntrustedInputError(
            f"{reason}{others}. resume={run_dir} takes the run's newest checkpoint and does not "
            f"fall back to an older one in place of a refused file. {instead}"
        )
    if not steps:
        raise ResumeError(f"resume={run_dir}: no readable checkpoint in {checkpoints}")
    _refuse_branches(run_dir, steps)
    newest = max(steps, key=lambda p: (steps[p], p.stat().st_mtime))
    branches = read_run_state(run_dir).get("branches") or []
    if branches:
        branch = branches[-1]
        log.info(
            "Continuing the branch chosen on %s at %s (step %s): its newest checkpoint is %s "
            "(step %d)%s",
            branch.get("chosen"), branch.get("checkpoint"), branch.get("global_step"),
            newest.relative_to(run_dir), steps[newest],
            f"; the checkpoints it left are in {branch['left']}" if branch.get("left") else "",
        )  # fmt: skip
    return newest


def _refuse_branches(run_dir: Path, steps: dict[Path, int]) -> None:
    """Refuse to guess between branches that share ``checkpoints/`` (as versions before the
    branch handling left them): Lightning's ``last-v1.ckpt`` beside ``last.ckpt``, or a resume
    from an older checkpoint whose run went on past it before that resume began."""
    lasts = {p: s for p, s in steps.items() if re.fullmatch(r"last(-v\d+)?\.ckpt", p.name)}
    branched: dict[Path, int] = {}
    entries = read_run_state(run_dir).get("resumes") or []
    if entries and "left" not in entries[-1]:  # a resume recorded without branch handling
        entry = entries[-1]
        started = _epoch(entry.get("started"))
        step = entry.get("global_step")
        chosen = run_dir / str(entry.get("checkpoint", ""))
        if started is not None and isinstance(step, int) and chosen in steps:
            branched = {p: s for p, s in steps.items() if s > step and p.stat().st_mtime < started}
            if branched:
                branched[chosen] = step
    if len(lasts) < 2 and not branched:
        return
    found = branched or lasts
    raise ResumeError(
        f"resume={run_dir}: its checkpoints/ holds more than one branch of the run (a resume "
        f"from an older checkpoint left the newer ones beside it): {_listing(run_dir, found)}; "
        f"segssl does not guess which one to continue. Name it: resume={run_dir}/checkpoints/"
        f"<file> (the checkpoints of the other branch then move to checkpoints/"
        f"{ABANDONED}<time>/)."
    )


def _epoch(text: Any) -> float | None:
    try:
        return time.mktime(time.strptime(str(text), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def branch_point(run_dir: Path, left: Path) -> int:
    """The step the run went back to when it left the checkpoints now in ``left``: the
    checkpoints past it in ``checkpoints/`` are those of the branch taken then."""
    name = str(left.relative_to(run_dir))
    for branch in reversed(read_run_state(run_dir).get("branches") or []):
        if branch.get("left") == name and isinstance(branch.get("global_step"), int):
            return int(branch["global_step"])
    raise ResumeError(
        f"resume={left}: {run_dir / RUN_STATE} does not record the step at which the run left "
        f"{name}, so segssl cannot tell which checkpoints of {run_dir / 'checkpoints'} to set "
        f"aside for it; move them by hand and name the checkpoint there"
    )


def leave_branch(plan: ResumePlan, checkpoint: Path, global_step: int, stamp: str) -> dict | None:
    """A resume from a checkpoint older than others of the run starts a branch: the checkpoints
    past its step (the run it leaves: ``last.ckpt``, ``latest.ckpt``, later best ones) move to
    ``checkpoints/abandoned_<time>/``, so a later plain ``resume=RUN`` continues this branch and
    the branch writes its own ``last.ckpt`` (not ``last-v1.ckpt`` beside a stale one).

    Going back to a checkpoint of a branch left earlier (``checkpoints/abandoned_*/FILE``)
    swaps: the current branch's checkpoints (past the step where that one was left) move
    aside, and that branch's checkpoints up to the chosen one move back into ``checkpoints/``
    (the chosen file is linked, as training reads it where it was named). Returns the branch
    record (None when the resume leaves nothing)."""
    if plan.checkpoint is None:
        return None
    run_dir, home = plan.run_dir, plan.run_dir / "checkpoints"
    steps, refused = checkpoint_steps(run_dir)
    for path in refused:
        log.warning("Leaving %s in place: it holds pickled objects (refused)", path)
    back: dict[Path, int] = {}
    if checkpoint.parent.name.startswith(ABANDONED) and checkpoint.parent.parent == home:
        base = branch_point(run_dir, checkpoint.parent)
        back = {p: s for p, s in checkpoint_steps(run_dir, checkpoint.parent)[0].items()}
        back = {p: s for p, s in back.items() if s <= global_step}
        names = {p.name for p in back}
        past = {p: s for p, s in steps.items() if s > base or p.name in names}
    else:
        past = {p: s for p, s in steps.items() if s > global_step and p != checkpoint}
    if not past and not back:
        return None
    folder = home / f"{ABANDONED}{stamp}"
    if past:
        folder.mkdir(parents=True, exist_ok=True)
        for path in past:
            move(path, folder / path.name)
    for path in back:
        if path == checkpoint:
            _link_or_copy(path, home / path.name)
        else:
            move(path, home / path.name)
    left = str(folder.relative_to(run_dir)) if past else None
    done = []
    if past:
        listed = ", ".join(f"{p.name}: step {s}" for p, s in sorted(past.items()))
        done.append(
            f"the {len(past)} checkpoint(s) of the run it leaves ({listed}) moved to {left}"
        )
    if back:
        listed = ", ".join(sorted(p.name for p in back))
        done.append(f"{listed} taken back into checkpoints/ from {checkpoint.parent.name}")
    log.warning(
        "Branching %s at %s (step %d): %s; a plain resume=%s continues this branch",
        run_dir, _relative(checkpoint, run_dir), global_step, "; ".join(done), run_dir,
    )  # fmt: skip
    return {
        "chosen": time.strftime("%Y-%m-%d %H:%M:%S"),
        "checkpoint": _relative(checkpoint, run_dir),
        "global_step": global_step,
        "left": left,
        "moved": {p.name: s for p, s in sorted(past.items())},
        "taken_back": {p.name: s for p, s in sorted(back.items())},
    }


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


def _relative(path: Path, run_dir: Path) -> str:
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


def record_resume(plan: ResumePlan, checkpoint: Path, global_step: int | None, seed: int) -> Path:
    """Write this start's effective config and applied overrides to ``.hydra/resume_<time>/``
    and append it, with the seed it continues on, to the run state; a finished run's results
    move there too (it is extended). A resume from an older checkpoint leaves the newer ones
    (``leave_branch``) and records the branch it chose."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folder = plan.run_dir / ".hydra" / f"resume_{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.yaml", OmegaConf.to_yaml(plan.config))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(plan.applied)))
    for path in [plan.run_dir / "results.json", *plan.run_dir.glob("per_case*.csv")]:
        if path.is_file():
            move(path, folder / path.name)
    branch = leave_branch(plan, checkpoint, int(global_step or 0), stamp)
    state = read_run_state(plan.run_dir)
    entry = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "checkpoint": _relative(checkpoint, plan.run_dir),
        "global_step": global_step,
        "seed": seed,
        "overrides": plan.applied,
        "record": str(folder.relative_to(plan.run_dir)),
        "left": branch["left"] if branch else None,  # the branch this resume left, if any
    }
    values: dict[str, Any] = {"resumes": [*state.get("resumes", []), entry]}
    if branch is not None:
        values["branches"] = [*state.get("branches", []), branch]
    write_run_state(plan.run_dir, **values)
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
