"""Overlay PNGs after every N-th validation: a fast GPU run validates every few seconds and
each drawing predicts its volumes again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from segssl.utils import callbacks
from segssl.utils.callbacks import ValidationOverlays


def drawn_steps(every: int, steps: list[int], max_steps: int, monkeypatch, tmp_path) -> list[int]:
    drawn: list[int] = []
    monkeypatch.setattr(ValidationOverlays, "_panels", lambda self, t, m, v: ["panel"])
    monkeypatch.setattr(callbacks, "render_overlays", lambda panels, path, model: drawn.append(
        int(path.stem.removeprefix("step_"))))  # fmt: skip
    monkeypatch.setattr(callbacks, "wandb_loggers", lambda trainer: [])
    datamodule = SimpleNamespace(val_split="val", volumes=lambda split: ["case"])
    overlays = ValidationOverlays(num_cases=1, every=every)
    for step in steps:
        trainer = SimpleNamespace(
            is_global_zero=True, sanity_checking=False, datamodule=datamodule,
            default_root_dir=str(tmp_path), global_step=step, max_steps=max_steps,
        )  # fmt: skip
        overlays.on_validation_end(trainer, SimpleNamespace(selection_model="net"))
    return drawn


def test_every_nth_validation_and_the_last_are_drawn(monkeypatch, tmp_path):
    steps = [200 * k for k in range(1, 8)]  # 7 validations, the last at max_steps
    assert drawn_steps(3, steps, 1400, monkeypatch, tmp_path) == [600, 1200, 1400]
    assert drawn_steps(1, steps, 1400, monkeypatch, tmp_path) == steps


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_a_bad_cadence_is_refused_naming_the_setting(every):
    with pytest.raises(ValueError, match="validation_overlays.every"):
        ValidationOverlays(every=every)
