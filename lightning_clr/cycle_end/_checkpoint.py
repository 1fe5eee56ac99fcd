"""``CycleEndCheckpoint``: Lightning's ``ModelCheckpoint`` that saves only at the CLR's cycle ends."""

from __future__ import annotations

import os
from typing import Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from lightning_clr._validation import ArgumentError, boolean, choice, int_in
from lightning_clr.cycle_end._clock import CycleEndClock, CycleEndHooks, Moment

__all__ = ["CycleEndCheckpoint"]

DEFAULT_FILENAME = "{cycle}-{epoch}-{step}"


class CycleEndCheckpoint(CycleEndHooks, ModelCheckpoint):
    """Save a checkpoint at every cycle end of :class:`~lightning_clr.CyclicLearningRate`, and keep the best
    ``save_top_k`` of them by ``monitor``.

    A cycle end, where the LR is back at ``base_lr``, is where a cyclical schedule's model is best: each one
    stands for a tuned schedule that ends there. This callback keeps those models, so a fit gives a usable
    model at every cycle end, and the best one at ``best_model_path``.

    When: in a fit that validates, at the first validation at or after each cycle end, with that validation's
    metric (a cycle derived from ``half_cycle_epochs`` is whole epochs, so with the default once-per-epoch
    validation this is the cycle end itself; with an explicit ``step_size_up`` that ends a cycle mid-epoch,
    validate at the cycle ends, or the checkpoint comes from the next validation, with one warning). In a fit
    without validation, right after the optimizer step that ends the cycle. A cycle end that no validation
    followed before the fit ended is saved at the end of the fit.

    Args:
        dirpath: Folder of the checkpoints (``None``: the logger's, as for ``ModelCheckpoint``).
        filename: Lightning's file name template; it may use ``{cycle}`` (the cycle that ended, from 1),
            ``{epoch}``, ``{step}`` and logged metrics. Default ``"{cycle}-{epoch}-{step}"``, e.g.
            ``cycle=2-epoch=7-step=64.ckpt``.
        monitor: Logged metric that ranks the cycle ends; ``None``: the latest cycle ends are kept.
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.
        save_top_k: Cycle ends kept: ``-1`` every one; ``k >= 1`` the best ``k`` by ``monitor`` (without a
            ``monitor`` only ``-1`` or ``1``, the latest).
        save_last: Also keep ``last.ckpt``, updated at each cycle end and at the end of the fit.
        save_weights_only: Save only the model's weights (no optimizer or callback state: no resume from them).
        verbose: Log each save.

    Attributes:
        cycles_judged: Cycle ends judged (and saved) in this fit, resumed ones included.

    The judged cycle ends are part of the callback's state, so a fit resumed from a checkpoint (this one's or
    any other) saves each cycle end once and ranks the new ones together with those saved before.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_clr import CycleEndCheckpoint, CyclicLearningRate
        >>> ckpt = CycleEndCheckpoint(monitor="val_loss", save_top_k=2)
        >>> trainer = pl.Trainer(callbacks=[CyclicLearningRate(), ckpt], logger=False)
        >>> # after trainer.fit(...): ckpt.best_model_path is the best cycle end
    """

    def __init__(
        self,
        dirpath: Optional[str] = None,
        filename: Optional[str] = None,
        monitor: Optional[str] = None,
        mode: Literal["min", "max"] = "min",
        save_top_k: int = -1,
        save_last: bool = False,
        save_weights_only: bool = False,
        verbose: bool = False,
    ) -> None:
        if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
            raise ArgumentError("dirpath", dirpath, "None or a folder path")
        if filename is not None and (not isinstance(filename, str) or not filename):
            raise ArgumentError("filename", filename, "None or a non-empty file name template")
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ArgumentError("monitor", monitor, "None or the name of a logged metric")
        choice("mode", mode, ("min", "max"))
        save_top_k = int_in("save_top_k", save_top_k, -1)
        if save_top_k == 0:
            raise ArgumentError("save_top_k", save_top_k, "-1 (every cycle end) or >= 1 (the best k)")
        if monitor is None and save_top_k > 1:
            raise ArgumentError("save_top_k", save_top_k, "-1 or 1 without a `monitor`",
                                "the best k cycle ends need a metric to rank them")
        super().__init__(
            dirpath=dirpath, filename=filename if filename is not None else DEFAULT_FILENAME, monitor=monitor,
            verbose=boolean("verbose", verbose), save_last=boolean("save_last", save_last), save_top_k=save_top_k,
            save_weights_only=boolean("save_weights_only", save_weights_only), mode=mode, every_n_epochs=0,
            save_on_train_epoch_end=False,
        )
        self._clock = CycleEndClock("CycleEndCheckpoint")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._at(trainer, "end")
        super().on_train_end(trainer, pl_module)  # save_last when nothing was saved

    @override
    def _at(self, trainer: pl.Trainer, moment: Moment) -> None:
        if trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._clock.due(trainer, moment) is None or self._last_global_step_saved == trainer.global_step:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    @override
    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["cycle"] = torch.tensor(self._clock.judged)
        return candidates
