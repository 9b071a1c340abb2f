"""Step counts of a method's phases, given as steps or as a fraction of the run."""

from __future__ import annotations


def resolve_steps(value: float, max_steps: int, key: str) -> int:
    """An integer is a number of steps; a float in (0, 1) a fraction of ``trainer.max_steps``."""
    if isinstance(value, float) and 0.0 < value < 1.0:
        if max_steps is None or max_steps <= 0:
            raise ValueError(
                f"{key}={value} is a fraction of trainer.max_steps, which is {max_steps}: set "
                f"trainer.max_steps or give {key} as a number of steps"
            )
        return int(round(value * max_steps))
    if float(value) != int(value) or value < 0:
        raise ValueError(f"{key}={value}: expected a step count >= 0 or a fraction in (0, 1)")
    return int(value)
