"""The ``lightning-clr`` command: a LightningCLI with the CyclicLearningRate callback on by default.

Subcommands: ``fit``, ``validate``, ``test`` and ``predict`` as in any LightningCLI, plus
``range_test`` (alias ``range-test``: the LR range test alone; prints both bounds and saves the curve as
JSON and PNG) and ``tune`` (Optuna tuning of the cycle length with :func:`lightning_clr.tune_cycle_length`).
The callback's arguments are flags under ``--clr.*`` (``--clr.mode triangular2``,
``--clr.range_test.num_steps 200``); ``--no_clr`` switches it off.

Needs jsonargparse: ``pip install lightning-clr[cli]``.

Example:
    .. code-block:: bash

        lightning-clr fit --model examples.digits.DigitsClassifier --data examples.digits.DigitsDataModule \\
            --trainer.max_epochs 8 --clr.mode triangular2
        lightning-clr range_test --config cfg.yaml --output_dir range_test/
        lightning-clr tune --config cfg.yaml --n_trials 8 --storage tune.journal --study_name clr

    In Python, ``LightningCLRCLI`` takes the arguments of ``LightningCLI``:

    >>> from lightning_clr.cli import LightningCLRCLI
    >>> cli = LightningCLRCLI(MyModel, MyDataModule)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional, Union

from lightning.pytorch import Callback, LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lightning_clr.callback import CyclicLearningRate
from lightning_clr.range_test import RangeTestConfig

__all__ = ["LightningCLRCLI", "main"]

DESCRIPTION = (
    "Lightning with cyclical learning rates: fit, validate, test and predict with the CyclicLearningRate callback"
    " on by default (flags --clr.*, off with --no_clr), run the LR range test alone (range_test), or tune the"
    " cycle length with Optuna (tune)."
)
RANGE_TEST_ALIAS = "range-test"
# Arguments of tune_cycle_length that the CLI fills from the model, data, trainer and --clr.* flags.
_TUNE_SKIP = {"model_kwargs", "datamodule_kwargs", "trainer_kwargs", "max_epochs", "base_lr", "max_lr", "range_test"}


def _fail(message: str) -> None:
    """Print ``message`` as a command-line error (no traceback) and exit with status 2."""
    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    if prog in ("", "-c", "cli.py", "__main__.py"):
        prog = "lightning-clr"
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _import_class(class_path: str) -> Optional[type]:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _plain(namespace: Any) -> dict[str, Any]:
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace or {})


def _flag_for(prefix: str, err: Exception) -> str:
    """The flag an error is about: an ArgumentError's ``argument``, else its message's first `name` in backticks,
    under ``prefix``."""
    argument = getattr(err, "argument", None)
    if isinstance(argument, str):
        return f"{prefix}.{argument}"
    names = re.findall(r"`(\w+)`", str(err))
    return f"{prefix}.{names[0]}" if names else prefix


def validate_clr_args(prefix: str, init_args: dict[str, Any]) -> None:
    """Build a :class:`CyclicLearningRate` from parsed ``init_args`` and turn a bad value into a CLI error
    naming its flag (``prefix`` is the flag of the callback, e.g. ``--clr`` or ``--trainer.callbacks``)."""
    kwargs = dict(init_args)
    range_test = kwargs.get("range_test")
    if isinstance(range_test, dict):
        fields = {k: v for k, v in range_test.items() if k != "metric"}  # a metric class spec is jsonargparse's
        try:
            kwargs["range_test"] = RangeTestConfig(**fields)
        except (ValueError, TypeError) as err:
            _fail(f"{_flag_for(prefix, err)}: {err}")  # the argument is `range_test.<field>`
    if kwargs.get("scale_fn") is not None and not isinstance(kwargs["scale_fn"], str):
        kwargs["scale_fn"] = None  # a callable resolved by jsonargparse; nothing to check here
    try:
        CyclicLearningRate(**kwargs)
    except (ValueError, TypeError, ImportError, AttributeError) as err:
        _fail(f"{_flag_for(prefix, err)}: {err}")


class LightningCLRCLI(LightningCLI):
    """LightningCLI with the :class:`~lightning_clr.CyclicLearningRate` callback on by default and two more
    subcommands, ``range_test`` (alias ``range-test``) and ``tune``.

    The callback's arguments are flags under ``--clr.*`` (or a ``clr:`` section in a ``--config`` file);
    ``--no_clr`` switches it off. It is added to ``fit`` only, and left out when ``--trainer.callbacks``
    already holds a ``CyclicLearningRate``. A bad value of a callback argument exits with status 2 and a
    one-line error naming the flag, before anything trains. Takes the arguments of ``LightningCLI``.

    Example:
        >>> from lightning_clr.cli import LightningCLRCLI
        >>> LightningCLRCLI(MyModel, MyDataModule, args=["fit", "--clr.mode", "triangular2"])  # doctest: +SKIP
    """

    CUSTOM_SUBCOMMANDS = ("range_test", "tune")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from lightning.pytorch.cli import _JSONARGPARSE_SIGNATURES_AVAILABLE

        if not _JSONARGPARSE_SIGNATURES_AVAILABLE:
            raise ModuleNotFoundError(
                "LightningCLRCLI needs jsonargparse: `pip install lightning-clr[cli]`"
                f" ({_JSONARGPARSE_SIGNATURES_AVAILABLE})"
            )
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ parser
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            **LightningCLI.subcommands(),
            "range_test": {"model", "datamodule"},
            "tune": {"model", "datamodule"},
        }

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("description", DESCRIPTION)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(CyclicLearningRate, "clr")
        parser.add_argument(
            "--no_clr",
            type=bool,
            nargs="?",
            const=True,
            default=False,
            help="Switch the CyclicLearningRate callback (the --clr.* flags) off.",
        )

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # LightningCLI reads each subcommand's flags and help off a Trainer method; range_test and tune are
        # methods of this class (and tune's flags are tune_cycle_length's arguments).
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        parser_subcommands = parser.add_subcommands()
        trainer_class = self.trainer_class if isinstance(self.trainer_class, type) else None
        for subcommand, skip in self.subcommands().items():
            custom = subcommand in self.CUSTOM_SUBCOMMANDS
            if not custom and trainer_class is None:
                from jsonargparse import class_from_function

                trainer_class = class_from_function(self.trainer_class)
            fn = getattr(type(self) if custom else trainer_class, subcommand)
            description = _short_description(fn)
            sub_kwargs = dict(kwargs.get(subcommand, {}))
            sub_kwargs.setdefault("description", description)
            sub_parser = self.init_parser(**sub_kwargs)
            self._add_arguments(sub_parser)
            if subcommand == "tune":
                from lightning_clr.tuning import tune_cycle_length

                added = sub_parser.add_function_arguments(tune_cycle_length, skip=_TUNE_SKIP | set(skip))
            else:
                added = sub_parser.add_method_arguments(
                    type(self) if custom else trainer_class, subcommand, skip=set(skip)
                )
            self._subcommand_method_arguments[subcommand] = added
            self._subcommand_parsers[subcommand] = sub_parser
            aliases = (RANGE_TEST_ALIAS,) if subcommand == "range_test" else ()
            parser_subcommands.add_subcommand(subcommand, sub_parser, help=description, aliases=aliases)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args is None:  # rewritten in place: DDP's child ranks re-run sys.argv
            sys.argv[1:] = _normalize_alias(sys.argv[1:])
        elif isinstance(args, (list, tuple)):
            args = _normalize_alias(list(args))
        super().parse_arguments(parser, args)

    # ------------------------------------------------------------------ instantiation
    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def _user_clr_callbacks(self) -> list[Any]:
        """``--trainer.callbacks`` entries (parsed, not instantiated) that are CyclicLearningRate callbacks."""
        callbacks = self._subconfig().get("trainer.callbacks")
        if callbacks is None:
            return []
        found = []
        for spec in callbacks if isinstance(callbacks, list) else [callbacks]:
            class_path = spec.get("class_path") if hasattr(spec, "get") else None
            cls = _import_class(class_path) if isinstance(class_path, str) else None
            if isinstance(cls, type) and issubclass(cls, CyclicLearningRate):
                found.append(spec)
        return found

    def _clr_enabled(self) -> bool:
        """Whether the ``--clr`` callback joins the trainer: fit only, not switched off, not given twice."""
        if self.subcommand not in (None, "fit") or self._subconfig().get("no_clr"):
            return False
        return not self._user_clr_callbacks()

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        if self._user_clr_callbacks():
            for spec in self._user_clr_callbacks():
                validate_clr_args("--trainer.callbacks", _plain(spec.get("init_args")))
            if self.subcommand in (None, "fit") and not config.get("no_clr"):
                rank_zero_info(
                    "lightning-clr: --trainer.callbacks holds a CyclicLearningRate, so the default --clr callback"
                    " is left out."
                )
        if self._clr_enabled() or self.subcommand in self.CUSTOM_SUBCOMMANDS:
            validate_clr_args("--clr", _plain(config.get("clr")))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # a bad value that only an __init__ could check
            _fail(f"invalid configuration: {err}")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        parser = self._parser(self.subcommand)
        keys = [key for key in parser.callback_keys if key != "clr" or self._clr_enabled()]
        extra_callbacks = [self._get(self.config_init, key) for key in keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = trainer_config.get("callbacks")
        # A copy, so that the parsed config keeps only the user's callbacks (tune reuses them per trial).
        if callbacks is None:
            callbacks = []
        trainer_config["callbacks"] = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        return self._instantiate_trainer(trainer_config, extra_callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand not in self.CUSTOM_SUBCOMMANDS:
            return super()._run_subcommand(subcommand)
        fn_kwargs = self._prepare_subcommand_kwargs(subcommand)
        getattr(self, subcommand)(**fn_kwargs)

    # ------------------------------------------------------------------ subcommands
    def range_test(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        output_dir: Optional[str] = None,
    ) -> Any:
        """Run the LR range test alone: print base_lr and max_lr, save the curve (JSON) and plot (PNG).

        The sweep's settings are the ``--clr.range_test.*`` flags, the same ones a ``fit`` would use.

        Args:
            model: The LightningModule (``--model``).
            datamodule: The LightningDataModule (``--data``).
            output_dir: Where ``lr_range_test.json`` and ``lr_range_test.png`` go. Default: the trainer's log dir.
        """
        from lightning_clr.range_test import lr_range_test

        clr = self._get(self.config_init, "clr")
        config = clr.range_test if isinstance(clr, CyclicLearningRate) else RangeTestConfig()
        config = dataclasses.replace(config, save=False)  # saved below, where --output_dir says
        result = lr_range_test(self.trainer, model, datamodule=datamodule, config=config)
        out = Path(output_dir if output_dir is not None else (self.trainer.log_dir or "."))
        written = _save_range_test(result, out) if self.trainer.is_global_zero else []
        rank_zero_only(print)(
            f"base_lr={float(result.base_lr):.6g} max_lr={float(result.max_lr):.6g}"
            + "".join(f"\nsaved {path}" for path in written)
        )
        return result

    def tune(
        self, model: LightningModule, datamodule: Optional[LightningDataModule] = None, **kwargs: Any
    ) -> Any:
        """Tune the cycle length with Optuna: every trial is a fit of --model on --data with CyclicLearningRate.

        The flags are the arguments of ``lightning_clr.tune_cycle_length``, grouped as it groups them
        (``--search.*``, ``--study.*``, ``--output.*``); ``--trainer.*`` flags configure every trial's Trainer
        (``--trainer.max_epochs`` is one trial's budget), ``--clr.base_lr``, ``--clr.max_lr`` and
        ``--clr.range_test.*`` the LR bounds, and ``--clr.mode`` the mode unless ``--search.modes`` is given.
        Exits with status 1 when no trial completed.
        """
        from lightning_clr._validation import ArgumentError
        from lightning_clr.tuning import SearchSpace, tune_cycle_length

        config = self._subconfig()
        clr = self._get(self.config_init, "clr")
        bounds = {name: config.get(f"clr.{name}") for name in ("base_lr", "max_lr")}
        for name, value in bounds.items():
            if isinstance(value, list):
                if len(value) != 1:
                    _fail(f"--clr.{name}: tune needs one value, got {value!r}")
                bounds[name] = value[0]
        trainer_kwargs = dict(self._get(self.config_init, "trainer", default={}))
        max_epochs = trainer_kwargs.pop("max_epochs", None)
        callbacks = trainer_kwargs.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]  # one callback from YAML
        trainer_kwargs["callbacks"] = [cb for cb in callbacks if isinstance(cb, Callback)]
        if isinstance(trainer_kwargs.get("logger"), bool) or trainer_kwargs.get("logger") is None:
            trainer_kwargs.pop("logger", None)  # each trial gets its own (the --output.logger flag)
        search = kwargs.get("search")
        if isinstance(clr, CyclicLearningRate) and config.get("search.modes") == SearchSpace().modes:
            if clr.mode == "exp_range":
                _fail("--clr.mode: tune searches 'triangular' and 'triangular2', got 'exp_range' (its gamma would"
                      " have to fit each trial's length)")
            if isinstance(search, SearchSpace):
                kwargs["search"] = dataclasses.replace(search, modes=(clr.mode,))
        try:
            import optuna  # noqa: F401
        except ImportError:
            _fail("tune needs optuna, an optional dependency: `pip install lightning-clr[tune]`")
        from lightning_clr.tuning._storage import StorageError

        try:
            result = tune_cycle_length(
                self._factory(config, "model"),
                self._factory(config, "data") if datamodule is not None else None,
                trainer_kwargs=trainer_kwargs,
                max_epochs=max_epochs,
                range_test=clr.range_test if isinstance(clr, CyclicLearningRate) else None,
                **bounds,
                **kwargs,
            )
        except ArgumentError as err:  # before any trial trained
            _fail(f"--{err.argument}: {err}")
        except StorageError as err:  # one line; the running trial is left to the next worker's heartbeat sweep
            print(f"lightning-clr: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        best = result.best_half_cycle_epochs
        if best is None:
            if result.study is not None:
                states = sorted({t.state.name for t in result.study.get_trials(deepcopy=False)})
                print(f"lightning-clr tune: no trial completed (trial states: {', '.join(states) or 'none'};"
                      f" see {config.get('output.output_dir')}/summary.txt)", file=sys.stderr)
            raise SystemExit(1)
        lrs = (("base_lr", result.base_lr), ("max_lr", result.best_max_lr))
        rank_zero_only(print)(
            f"best half_cycle_epochs={best} step_size_up={result.best_step_size_up} mode={result.best_mode}"
            f" {result.monitor}={result.best_value:.6g}\ntrain with: --clr.half_cycle_epochs {best}"
            f" --clr.mode {result.best_mode}" + "".join(f" --clr.{k} {v:.6g}" for k, v in lrs if v is not None)
        )
        return result

    def _factory(self, config: Any, key: str) -> Any:
        """A callable that builds a fresh ``key`` (model or data) from the parsed config, with the CLI's
        ``--optimizer``/``--lr_scheduler`` applied to a model, as LightningCLI does."""
        parser = self._parser(self.subcommand)

        def build(**_: Any) -> Any:
            config_init = parser.instantiate_classes(config)
            obj = config_init.get(key)
            if key == "model":  # LightningCLI's method works on self.model
                saved, self.model = self.model, obj
                try:
                    self._add_configure_optimizers_method_to_model(self.subcommand)
                finally:
                    self.model = saved
            return obj

        return build


def _short_description(fn: Any) -> Optional[str]:
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else None


def _normalize_alias(args: list[str]) -> list[str]:
    """Replace the subcommand ``range-test`` by ``range_test`` (the first argument not taken by an option)."""
    for i, arg in enumerate(args):
        if not arg.startswith("-") and (i == 0 or not _takes_value(args[i - 1])):
            if arg == RANGE_TEST_ALIAS:
                args[i] = "range_test"
            break
    return args


def _takes_value(option: str) -> bool:
    return option.startswith("-") and "=" not in option and option not in ("-h", "--help")


def _save_range_test(result: Any, out: Path) -> list[Path]:
    """Write the curve (JSON) and the plot (PNG) under ``out``, named as a fit's range test names them."""
    from lightning_clr.range_test import save_result

    paths, _ = save_result(result, str(out))
    return [Path(p) for p in paths]


def main(args: Union[list[str], None] = None) -> None:
    """Entry point of the ``lightning-clr`` console command.

    The current directory is importable, so ``--model my_module.MyModel`` finds ``./my_module.py``.

    Example:
        >>> from lightning_clr.cli import main
        >>> main(["fit", "--model", "examples.digits.DigitsClassifier", "--trainer.max_epochs", "1"])  # doctest: +SKIP
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        LightningCLRCLI(args=args)
    except ModuleNotFoundError as err:
        if "lightning-clr[" not in str(err):
            raise
        _fail(str(err))


if __name__ == "__main__":  # pragma: no cover
    main()
