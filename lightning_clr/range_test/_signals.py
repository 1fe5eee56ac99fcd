"""SIGTERM during the sweep: stop at the next step and end the fit as Lightning's training loop does.

Lightning's signal connector sets ``trainer.received_sigterm``; its training loop checks it after each batch
and raises :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException` (a ``SystemExit``), which the
Trainer turns into ``on_exception`` hooks, status ``interrupted`` and a clean exit. The sweep does the same
after each of its steps, with each rank's flag carried in the step's loss all-reduce, so that every rank stops
at the same step.

Under DDP, Lightning's handler also runs a ``broadcast`` from *inside* the signal handler. During the sweep
that collective can pair with the sweep's all-reduce on a rank that was inside a collective when the signal
came, and both ranks hang (docs/evidence.md). So for the sweep's duration, and only under DDP, the
handler is the same one without that broadcast: it logs, forwards the signal to the launcher's processes and
sets the flag, as Lightning's does, and runs Lightning's other SIGTERM handlers (SLURM's, a user's) unchanged.

Example:
    >>> import lightning.pytorch as pl
    >>> with sigterm_without_collectives(pl.Trainer(logger=False)):  # a single process: nothing changes
    ...     pass
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message

from lightning_clr._lightning import sigterm_notifier

__all__ = ["raise_sigterm", "sigterm_without_collectives"]

log = logging.getLogger(__name__)


def raise_sigterm(trainer: pl.Trainer, step: int) -> None:
    """As Lightning's training loop does on SIGTERM: raise ``SIGTERMException``; under DDP after a barrier."""
    rank_zero_info(f"LR range test: SIGTERM received; stopping the sweep after step {step}, with the model restored.")
    if trainer.world_size > 1:
        with contextlib.suppress(Exception):
            trainer.strategy.barrier("lr_range_test_sigterm")
    raise SIGTERMException()


@contextlib.contextmanager
def sigterm_without_collectives(trainer: pl.Trainer) -> Iterator[None]:
    """Under DDP, for the block's duration: Lightning's SIGTERM handler without its in-handler broadcast."""
    connector, notifier = sigterm_notifier(trainer)
    current = signal.getsignal(signal.SIGTERM)
    handlers = list(getattr(current, "signal_handlers", []))  # Lightning's composed handler, if it is set
    if (
        trainer.world_size <= 1
        or notifier not in handlers
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def notify(signum: int) -> None:
        log.info(rank_prefixed_message(f"Received SIGTERM: {signum}", trainer.local_rank))
        if not connector.received_sigterm:
            launcher = trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signum)
        connector.received_sigterm = True

    def handler(signum: int, frame: Any) -> None:
        for h in handlers:
            if h == notifier:
                notify(signum)
            else:
                h = signal.getsignal(h) if isinstance(h, int) else h
                if callable(h):
                    h(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, current)
