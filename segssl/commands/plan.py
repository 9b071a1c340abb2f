"""``python -m segssl plan data.root=PATH [name=NAME] [--print]``: fingerprint a NIfTI folder
dataset, plan its training, and write ``experiment/NAME.yaml`` (and ``NAME.plan.json``, the
fingerprint and every choice with its reason) where ``train +experiment=NAME`` finds it.

Settings are ``key=value`` words over ``conf/plan.yaml`` (no Hydra run folder: planning makes
no run). Nothing is written until the whole dataset has been read and planned, and an earlier
experiment of the same name is kept unless ``overwrite=true``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segssl.data.layouts.folder import FolderLayout
from segssl.data.readers import DataError
from segssl.planning.experiment import NAME_PATTERN, experiment_yaml, override_line
from segssl.planning.fingerprint import fingerprint
from segssl.planning.planner import PlanError, make_plan
from segssl.runs.hydra_app import (
    CONFIG_PATH_ENV,
    LOCAL_CONFIG_DIR,
    config_dir,
    user_config_dirs,
)
from segssl.utils.atomic import write_text

log = logging.getLogger(__name__)


def settings(argv: list[str]) -> DictConfig:
    """``conf/plan.yaml`` with the ``key=value`` words (and ``--print``) applied."""
    words = [w for w in argv if w != "--print"]
    bad = [w for w in words if "=" not in w or w.startswith("-")]
    if bad:
        raise PlanError(
            f"unexpected argument(s) {bad}: expected key=value words, e.g. data.root=PATH"
        )
    base = OmegaConf.load(config_dir() / "plan.yaml")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(words))
    except OmegaConfBaseException as err:
        raise PlanError(f"plan settings: {err}") from err
    unknown = sorted(set(OmegaConf.to_container(cfg)) - set(OmegaConf.to_container(base)))
    if unknown:
        raise PlanError(
            f"unknown setting(s) {unknown}; expected those of {config_dir() / 'plan.yaml'}"
        )
    if "--print" in argv:
        cfg.print = True
    if OmegaConf.is_missing(cfg.data, "root"):
        raise PlanError("data.root is required: the dataset folder (imagesTr/, labelsTr/, lists)")
    folds = cfg.plan.num_folds
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise PlanError(f"plan.num_folds={folds!r}: expected an int >= 2")
    memory = cfg.plan.gpu_memory_gb
    if isinstance(memory, bool) or not isinstance(memory, int | float) or memory <= 0:
        raise PlanError(f"plan.gpu_memory_gb={memory!r}: expected a positive number of GB")
    return cfg


def experiment_dir(cfg: DictConfig) -> Path:
    """Where the experiment goes: ``config_dir``, else $SEGSSL_CONFIG_PATH's first folder,
    else ./segssl_configs; always its ``experiment/`` group folder."""
    if cfg.config_dir:
        base = Path(str(cfg.config_dir)).expanduser()
    elif os.environ.get(CONFIG_PATH_ENV):
        base = Path(os.environ[CONFIG_PATH_ENV].split(os.pathsep)[0]).expanduser()
    else:
        base = Path.cwd() / LOCAL_CONFIG_DIR
    return base.resolve() / "experiment"


def experiment_name(cfg: DictConfig, root: Path) -> str:
    name = str(cfg.name) if cfg.name else root.resolve().name
    if not NAME_PATTERN.match(name):
        raise PlanError(f"name={name!r}: expected letters, digits, '_', '-' or '.'")
    if (config_dir() / "experiment" / f"{name}.yaml").is_file():
        raise PlanError(
            f"name={name!r} is a packaged experiment (+experiment={name} would load that one); "
            "choose another name"
        )
    return name


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fingerprint, plan, and write (or print); returns what was written."""
    root = Path(str(cfg.data.root)).expanduser()
    name = experiment_name(cfg, root)
    folder = experiment_dir(cfg)
    yaml_path, json_path = folder / f"{name}.yaml", folder / f"{name}.plan.json"
    if not cfg.print and not cfg.overwrite:
        existing = [str(p) for p in (yaml_path, json_path) if p.exists()]
        if existing:  # refused before the dataset is read
            raise PlanError(
                f"{existing[0]} exists: pass overwrite=true to replace it, or name=OTHER"
            )
    facts = fingerprint(root, seed=int(cfg.plan.seed), num_folds=int(cfg.plan.num_folds))
    plan = make_plan(
        facts, name=name, gpu_memory_gb=float(cfg.plan.gpu_memory_gb), method=str(cfg.plan.method)
    )
    root_text = facts["root"]
    if cfg.print:
        for key, reason in plan.reasons.items():
            print(f"{key} = {json.dumps(plan.choices[key])}\n    {reason}")
        print("\n" + override_line(plan, root_text))
        return {"plan": plan.as_json()}
    record = {
        "name": name,
        "experiment": str(yaml_path),
        "settings": {"gpu_memory_gb": cfg.plan.gpu_memory_gb, "method": cfg.plan.method},
        "plan": plan.as_json(),
        "train": f"python -m segssl train +experiment={name}",
        "override_line": override_line(plan, root_text),
        "fingerprint": facts,
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_text(json_path, json.dumps(record, indent=1) + "\n")
    write_text(yaml_path, experiment_yaml(plan, root_text, json_path))
    print(f"Wrote {yaml_path}\n  and {json_path}")
    if facts["split"]["source"] == "made":  # the folds every data.fold of this plan trains
        layout = FolderLayout(root, dims=3, cache=False, num_folds=int(cfg.plan.num_folds))
        print(f"  and the cross-validation folds: {layout.split().description}")
    print(f"Train with: python -m segssl train +experiment={name}")
    if folder.parent not in user_config_dirs():
        print(f"  after: export {CONFIG_PATH_ENV}={folder.parent}  (not searched from here)")
    return record


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print((config_dir() / "plan.yaml").read_text())
        return
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    try:
        run(settings(argv))
    except (PlanError, DataError) as err:
        print(f"segssl plan: {err}", file=sys.stderr)
        raise SystemExit(2) from None
