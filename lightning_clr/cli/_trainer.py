"""The Trainer side of the ``lightning-clr`` command: the methods of its two extra subcommands.

LightningCLI reads each subcommand's flags and help off the Trainer method of that name (``Trainer.fit``
gives ``lightning-clr fit``), so ``range_test`` and ``tune`` are Trainer methods here, mixed into the CLI's
``trainer_class``; ``LightningCLRCLI`` runs its own method of the same name where it has one.

Example:
    >>> from lightning.pytorch import Trainer
    >>> hasattr(with_subcommands(Trainer), "range_test")
    True
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lightning_clr._outputs import writable_dir
from lightning_clr.range_test import RangeTestConfig, lr_range_test, save_result
from lightning_clr.tuning import tune_cycle_length

__all__ = ["print_tune_result", "with_subcommands"]


class _SubcommandMethods:
    """The Trainer methods of the two extra subcommands: LightningCLI reads each subcommand's flags and help
    off the Trainer method of that name, and runs ``LightningCLRCLI.<subcommand>`` where it exists."""

    def range_test(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        output_dir: Optional[str] = None,
        config: Optional[RangeTestConfig] = None,
    ) -> Any:
        """Run the LR range test alone (alias range-test): print base_lr and max_lr, save the curve and plot.

        The sweep's settings are the ``--clr.range_test.*`` flags, the same ones a ``fit`` would use.

        Args:
            model: The LightningModule (``--model``).
            datamodule: The LightningDataModule (``--data``).
            output_dir: Where ``lr_range_test.json`` and ``lr_range_test.png`` go. Default: the trainer's log dir.
            config: The range test's settings (``--clr.range_test.*``).
        """
        trainer: Any = self
        if output_dir is not None and trainer.is_global_zero:  # before the sweep: the files go there at the end
            writable_dir("output_dir", output_dir)
        config = dataclasses.replace(config or RangeTestConfig(), save=False)  # saved below, where output_dir says
        result = lr_range_test(trainer, model, datamodule=datamodule, config=config)
        out = Path(output_dir if output_dir is not None else (trainer.log_dir or "."))
        rank_zero_only(print)(f"base_lr={float(result.base_lr):.6g} max_lr={float(result.max_lr):.6g}", flush=True)
        written = _save_range_test(result, out) if trainer.is_global_zero else []
        rank_zero_only(print)("".join(f"saved {path}\n" for path in written), end="")
        return result

    def tune(
        self,
        model: Any,
        datamodule: Any = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Tune the cycle length with Optuna: every trial is a fit of --model on --data with CyclicLearningRate.

        The flags are the arguments of ``lightning_clr.tune_cycle_length``; ``--trainer.*`` flags configure
        every trial's Trainer (``--trainer.max_epochs`` is one trial's budget), ``--clr.base_lr``,
        ``--clr.max_lr`` and ``--clr.range_test.*`` the LR bounds, and ``--clr.mode`` the mode unless
        ``--search.modes`` is given. Each trial builds its own Trainer; this one is not used. LightningCLI reads
        the subcommand's flags and help off this method (jsonargparse follows ``**kwargs`` into the call below);
        ``LightningCLRCLI.tune`` is what runs.

        Args:
            model: A LightningModule class or factory (``--model``).
            datamodule: A LightningDataModule class or factory (``--data``).
            verbose: Show Lightning's banner ("GPU available", tips) and a model summary for every trial.
        """
        return tune_cycle_length(model, datamodule, **kwargs)  # jsonargparse reads **kwargs' flags off this call


class _SubcommandTrainer(_SubcommandMethods, Trainer):
    """Lightning's Trainer with the ``range_test`` and ``tune`` subcommand methods."""


@functools.cache
def with_subcommands(trainer_class: Any) -> type:
    """``trainer_class`` with the ``range_test`` and ``tune`` methods that LightningCLI reads the subcommands off."""
    if not isinstance(trainer_class, type) or not issubclass(trainer_class, Trainer):
        raise TypeError(f"LightningCLRCLI: `trainer_class` must be a Trainer subclass, got {trainer_class!r}")
    if issubclass(trainer_class, _SubcommandMethods):
        return trainer_class
    if trainer_class is Trainer:
        return _SubcommandTrainer
    return type(trainer_class.__name__, (_SubcommandMethods, trainer_class), {"__doc__": trainer_class.__doc__})


def _save_range_test(result: Any, out: Path) -> list[Path]:
    """Write the curve (JSON) and the plot (PNG) under ``out``, named as a fit's range test names them."""
    try:
        paths, _ = save_result(result, str(out))
    except OSError as err:  # the bounds are printed already; the sweep's result is not thrown away for a file
        rank_zero_warn(f"lightning-clr range_test: could not write the curve and plot under {str(out)!r}"
                       f" ({err.strerror or err}); base_lr and max_lr are printed above.")
        return []
    return [Path(p) for p in paths]


def print_tune_result(result: Any, output_dir: Any) -> None:
    """The best setting as the flags to train with; no completed trial exits with status 1."""
    best = result.best_half_cycle_epochs
    if best is None:
        if result.study is not None:
            states = sorted({t.state.name for t in result.study.get_trials(deepcopy=False)})
            print(f"lightning-clr tune: no trial completed (trial states: {', '.join(states) or 'none'};"
                  f" see {output_dir}/summary.txt)", file=sys.stderr)
        raise SystemExit(1)
    lrs = (("base_lr", result.base_lr), ("max_lr", result.best_max_lr))
    rank_zero_only(print)(
        f"best half_cycle_epochs={best} step_size_up={result.best_step_size_up} mode={result.best_mode}"
        f" {result.monitor}={result.best_value:.6g}\ntrain with: --clr.half_cycle_epochs {best}"
        f" --clr.mode {result.best_mode}" + "".join(f" --clr.{k} {_lr_flag(v)}" for k, v in lrs if v is not None)
    )


def _lr_flag(value: Any) -> str:
    """One bound, or one per param group as the flag's list syntax."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"{v:.6g}" for v in value) + "]"
    return f"{value:.6g}"
