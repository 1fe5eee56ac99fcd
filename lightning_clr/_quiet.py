"""Lightning's per-Trainer banner ("GPU available", "TPU available", tips, "Seed set to") kept out of runs
that build many Trainers (the tuner's trials). lightning_clr's own lines, and every warning, still pass.

Example:
    >>> with muted_banner():
    ...     pass  # Trainers built here print no banner
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import lightning

__all__ = ["muted_banner", "quiet_banner"]

_BANNER_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning.fabric.utilities.seed",
)
_LIGHTNING_DIR = os.path.dirname(os.path.abspath(lightning.__file__)) + os.sep


class _QuietBanner(logging.Filter):
    """Drops the info lines that Lightning itself logs (its banner and tips); lightning_clr's own pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not os.path.abspath(record.pathname).startswith(_LIGHTNING_DIR)


def quiet_banner() -> None:
    """Mute the banner for the rest of the process (the ``lightning-clr tune`` command)."""
    for name in _BANNER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietBanner) for f in logger.filters):
            logger.addFilter(_QuietBanner())


@contextlib.contextmanager
def muted_banner(enabled: bool = True) -> Iterator[None]:
    """Mute the banner inside the block only (``enabled=False``: a no-op)."""
    added = []
    if enabled:
        for name in _BANNER_LOGGERS:
            f = _QuietBanner()
            logging.getLogger(name).addFilter(f)
            added.append((name, f))
    try:
        yield
    finally:
        for name, f in added:
            logging.getLogger(name).removeFilter(f)
