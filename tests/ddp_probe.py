"""A callback for the DDP test: records which training cases each rank saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl


class RecordCases(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path, self.cases = Path(path), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for part in batch.values():
            self.cases.extend(part["case"])

    def on_train_end(self, trainer, pl_module) -> None:
        out = self.path / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world": trainer.world_size, "cases": self.cases}))
