"""Silence the warnings and tips we know to be harmless, in one place, each saying why.

Called once where a command starts (``silence_known_noise()``); the filters are process-wide
and inherited by forked data-loader workers. Anything not listed here still shows.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, why it is harmless) for Python warnings
KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (
    (
        r".*isinstance\(treespec, LeafSpec\)` is deprecated",
        "torch deprecates LeafSpec, which Lightning's _pytree helper still uses; nothing of ours "
        "and no behaviour change (gone when Lightning updates)",
    ),
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        "our runs are step-based: Lightning logs every log_every_n_steps global steps across "
        "epochs, so a short epoch loses no log rows",
    ),
    (
        r"Checkpoint directory .* exists and is not empty",
        "a resumed run continues in its own checkpoints/ folder (RunCheckpoint tracks its files "
        "by name); a new run never starts in a used folder (refuse_existing_run)",
    ),
)

# (start of the message, why) for lines Lightning logs at INFO
KNOWN_LOG_LINES: tuple[tuple[str, str], ...] = (
    ("💡 Tip: For seamless cloud logging", "an advert for the litlogger package"),
    ("💡 Tip: For seamless cloud uploads", "an advert for the litmodels package"),
)

LIGHTNING_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
)


class _DropKnownLines(logging.Filter):
    """Drops the log records of ``KNOWN_LOG_LINES``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(message.startswith(start) for start, _ in KNOWN_LOG_LINES)


_FILTER = _DropKnownLines()


def silence_known_noise() -> None:
    """Install the filters (idempotent: a second call adds nothing)."""
    for pattern, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
