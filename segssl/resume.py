"""Resuming a run folder: its own config, its newest checkpoint, its W&B run id."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

RUN_STATE = ".segssl_run.json"


def resume_overrides(argv: list[str]) -> list[str]:
    """Hydra overrides that put a resumed job into its original folder, with this start's
    config snapshot in a subfolder of its own (the original ``.hydra/`` is kept)."""
    for arg in argv:
        if arg.startswith("resume=") and arg.split("=", 1)[1] not in ("", "null"):
            run_dir = Path(arg.split("=", 1)[1]).expanduser().resolve()
            if run_dir.is_file():  # a checkpoint inside the run folder
                run_dir = run_dir.parent.parent
            if not (run_dir / ".hydra" / "config.yaml").is_file():
                raise FileNotFoundError(
                    f"resume={run_dir}: not a segssl run folder (no .hydra/config.yaml)"
                )
            stamp = __import__("time").strftime("%Y-%m-%d_%H-%M-%S")
            return [f"hydra.run.dir={run_dir}", f"hydra.output_subdir=.hydra/resume_{stamp}"]
    return []


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The run's own config (so no override is needed), keeping the ``resume`` key."""
    run_dir = Path(cfg.resume).expanduser().resolve()
    if run_dir.is_file():
        run_dir = run_dir.parent.parent
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    with open_dict(saved):
        saved.resume = str(run_dir)
    return saved


def latest_checkpoint(run_dir: Path) -> Path:
    """The checkpoint with the highest global step among ``checkpoints/*.ckpt``."""
    candidates = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if not candidates:
        raise FileNotFoundError(f"resume={run_dir}: no checkpoint in {run_dir / 'checkpoints'}")

    def step(path: Path) -> int:
        try:
            return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is skipped, not fatal
            log.warning("Skipping unreadable checkpoint %s", path)
            return -1

    steps = {path: step(path) for path in candidates}
    best = max(steps, key=lambda p: (steps[p], p.stat().st_mtime))
    if steps[best] < 0:
        raise FileNotFoundError(f"resume={run_dir}: no readable checkpoint")
    return best


def read_run_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_run_state(run_dir: Path, **values: Any) -> None:
    state = read_run_state(run_dir) | values
    (run_dir / RUN_STATE).write_text(json.dumps(state, indent=2))
