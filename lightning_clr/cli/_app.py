"""The ``lightning-clr`` LightningCLI: the ``--clr.*`` callback group, the ``range_test`` and ``tune``
subcommands and the console entry point (the package's docstring says how to use it)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from typing import Any, Optional, Union

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch import __version__ as pl_version
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning_utilities.core.imports import RequirementCache

from lightning_clr._lightning import add_configure_optimizers, cli_get
from lightning_clr._outputs import writable_dir
from lightning_clr._quiet import quiet_banner
from lightning_clr._validation import ArgumentError
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.cli._checks import callback_args, validate_clr_args
from lightning_clr.cli._errors import debug, fail, join_flag, shorten_parse_error
from lightning_clr.cli._trainer import print_tune_result, with_subcommands
from lightning_clr.cli._yaml import register as register_yaml_loader
from lightning_clr.range_test import RangeTestConfig
from lightning_clr.tuning import OutputConfig, SearchSpace, tune_cycle_length

__all__ = ["LightningCLRCLI", "main"]

DESCRIPTION = (
    "Lightning with cyclical learning rates: fit, validate, test and predict with the CyclicLearningRate callback"
    " on by default (flags --clr.*, off with --no_clr), run the LR range test alone (range_test), or tune the"
    " cycle length with Optuna (tune)."
)
RANGE_TEST_ALIAS = "range-test"
# Arguments of tune_cycle_length that the CLI fills from the model, data, trainer and --clr.* flags.
_TUNE_SKIP = {"model_kwargs", "datamodule_kwargs", "trainer_kwargs", "max_epochs", "base_lr", "max_lr", "range_test"}
_CLR_ARGS = frozenset(inspect.signature(CyclicLearningRate).parameters)
_RANGE_TEST_FIELDS = frozenset(f.name for f in dataclasses.fields(RangeTestConfig))


def _import_class(class_path: str) -> Optional[type]:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None


class _Parser(LightningArgumentParser):
    """LightningArgumentParser whose parse errors are one line naming the full flag (``JSONARGPARSE_DEBUG``
    shows jsonargparse's own message and usage instead)."""

    def error(self, message: str, ex: Optional[Exception] = None) -> Any:
        if not self.exit_on_error or debug():  # jsonargparse's inner parsers raise, to try other types
            return super().error(message, ex)
        fail(shorten_parse_error(message, tuple(LightningCLRCLI.subcommands())))


class LightningCLRCLI(LightningCLI):
    """LightningCLI with the :class:`~lightning_clr.CyclicLearningRate` callback on by default and two more
    subcommands, ``range_test`` (alias ``range-test``) and ``tune``.

    The callback's arguments are flags under ``--clr.*`` (or a ``clr:`` section in a ``--config`` file);
    ``--no_clr`` switches it off. It is added to ``fit`` only, and left out when ``--trainer.callbacks``
    already holds a ``CyclicLearningRate``. Every error (a type, a choice, a value the callback refuses,
    one that only the optimizer can check, a bad import path, a ``tune`` argument) exits with status 2 and
    one line naming the full flag, before anything trains. Takes the arguments of ``LightningCLI``;
    ``trainer_class`` must be a Trainer subclass (it gets the ``range_test`` and ``tune`` methods).

    Example:
        >>> from lightning_clr.cli import LightningCLRCLI
        >>> LightningCLRCLI(MyModel, MyDataModule, args=["fit", "--clr.mode", "triangular2"])  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        available = RequirementCache("jsonargparse[signatures]")
        if not available:
            raise ModuleNotFoundError(
                f"LightningCLRCLI needs jsonargparse: `pip install lightning-clr[cli]` ({available})"
            )
        bound = inspect.signature(LightningCLI.__init__).bind_partial(self, *args, **kwargs).arguments
        bound.pop("self")
        bound["trainer_class"] = with_subcommands(bound.get("trainer_class", Trainer))
        try:
            super().__init__(**bound)
        except ArgumentError as err:  # a check that needs the fit (optimizer param groups) or the tuner
            if debug():
                raise
            fail(f"{self._flag_of(err.argument)}: {err}")

    # ------------------------------------------------------------------ parser
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            **LightningCLI.subcommands(),
            "range_test": {"model", "datamodule", "config"},
            "tune": {"model", "datamodule", *_TUNE_SKIP},
        }

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # LightningCLI's own init_parser, with the parser class whose errors are one line. Not through its
        # `parser_class` argument: Lightning 2.5 (the declared floor) does not have it.
        from jsonargparse import ActionConfigFile

        kwargs.setdefault("description", DESCRIPTION)
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl_version}"])
        if kwargs.get("parser_mode", "yaml") == "yaml":  # YAML with size, depth and alias-expansion limits
            kwargs["parser_mode"] = register_yaml_loader()
        cls = getattr(self, "parser_class", LightningArgumentParser)
        parser = (_Parser if cls is LightningArgumentParser else cls)(**kwargs)
        parser.add_argument(
            "-c", "--config", action=ActionConfigFile, help="Path to a configuration file in json or yaml format."
        )
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Not add_lightning_class_args: that would make it one of the trainer's callbacks in every subcommand.
        parser.add_class_arguments(CyclicLearningRate, "clr", fail_untyped=False, sub_configs=True)
        parser.add_argument(
            "--no_clr",
            type=bool,
            nargs="?",
            const=True,
            default=False,
            help="Switch the CyclicLearningRate callback (the --clr.* flags) off.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args is None:  # rewritten in place: DDP's child ranks re-run sys.argv
            sys.argv[1:] = _normalize_alias(sys.argv[1:])
        elif isinstance(args, (list, tuple)):
            args = _normalize_alias(list(args))
        super().parse_arguments(parser, args)
        self._validate_callbacks()  # before seeding and before anything is built: the error is the only line
        self._check_output_dir()
        if self.config.get("subcommand") == "tune" and not self._subconfig().get("verbose"):
            quiet_banner()  # every trial builds a Trainer: no banner and no model summary for each
            trainer = self._subconfig()["trainer"]
            if trainer.get("enable_model_summary") is None:
                trainer["enable_model_summary"] = False

    # ------------------------------------------------------------------ checks and flags
    def _subconfig(self, config: Any = None) -> Any:
        config = self.config if config is None else config
        subcommand = self.config.get("subcommand")
        return config[subcommand] if subcommand else config

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
        if self.config.get("subcommand") not in (None, "fit") or self._subconfig().get("no_clr"):
            return False
        return not self._user_clr_callbacks()

    def _validate_callbacks(self) -> None:
        for spec in self._user_clr_callbacks():
            validate_clr_args("--trainer.callbacks", callback_args(spec.get("init_args"), "--trainer.callbacks"))
        validate_clr_args("--clr", callback_args(self._subconfig().get("clr")))

    def _check_output_dir(self) -> None:
        """A directory the subcommand writes at its end, checked before anything runs (still best-effort then)."""
        path = self._subconfig().get("output_dir") if self.config.get("subcommand") == "range_test" else None
        if path is not None:  # (tune checks its --output.output_dir itself, once its arguments are checked)
            try:
                writable_dir("output_dir", path)
            except ArgumentError as err:
                fail(f"--output_dir: {err}")

    def _flag_of(self, argument: str) -> str:
        """The flag of an ArgumentError raised while running: a subcommand's own argument (``--n_trials``),
        else an argument of the callback in use (``--clr.max_lr``, ``--clr.range_test.num_steps``)."""
        config = self._subconfig() if getattr(self, "config", None) is not None else {}
        head = argument.split(".", 1)[0]
        if head not in _CLR_ARGS and argument in config:
            return f"--{argument}"
        prefix = "--trainer.callbacks" if self._user_clr_callbacks() and not self._clr_enabled() else "--clr"
        if head not in _CLR_ARGS and head in _RANGE_TEST_FIELDS:
            prefix += ".range_test"
        return join_flag(prefix, argument)

    # ------------------------------------------------------------------ instantiation
    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        if self._user_clr_callbacks() and subcommand in (None, "fit") and not self._subconfig().get("no_clr"):
            rank_zero_info(
                "lightning-clr: --trainer.callbacks holds a CyclicLearningRate, so the default --clr callback"
                " is left out."
            )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ArgumentError:
            raise
        except ValueError as err:  # a bad value that only an __init__ could check
            if debug():
                raise
            fail(f"invalid configuration: {err}")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self._subconfig(self.config_init)
        trainer = config.get("trainer") or {}
        callbacks = trainer.get("callbacks")
        # A new list: the parsed config keeps only the user's callbacks (tune reuses them per trial).
        callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if self._clr_enabled():
            callbacks.append(config.get("clr"))
        kwargs.setdefault("callbacks", callbacks)
        if self.config.get("subcommand") == "range_test" and config.get("output_dir") is not None:
            # Files only where --output_dir says: no default logger (lightning_logs/version_N/hparams.yaml).
            for key in ("logger", "enable_checkpointing"):
                if trainer.get(key) is None:
                    kwargs.setdefault(key, False)
        return super().instantiate_trainer(**kwargs)

    # ------------------------------------------------------------------ subcommands
    def range_test(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        output_dir: Optional[str] = None,
    ) -> Any:
        """Run the LR range test alone, with the ``--clr.range_test.*`` settings (see ``Trainer.range_test``)."""
        clr = self._subconfig(self.config_init).get("clr")
        config = clr.range_test if isinstance(clr, CyclicLearningRate) else RangeTestConfig()
        return self.trainer.range_test(model, datamodule, output_dir=output_dir, config=config)

    def tune(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Tune the cycle length with Optuna: every trial is a fit of --model on --data with CyclicLearningRate.

        The flags are the arguments of ``lightning_clr.tune_cycle_length``, grouped as it groups them
        (``--search.*``, ``--study.*``, ``--output.*``); ``--trainer.*`` flags configure every trial's Trainer
        (``--trainer.max_epochs`` is one trial's budget), ``--clr.base_lr``, ``--clr.max_lr`` and
        ``--clr.range_test.*`` the LR bounds, and ``--clr.mode`` the mode unless ``--search.modes`` is given.
        Exits with status 1 when no trial completed.
        """
        config = self._subconfig()
        clr = cli_get(self, self.config_init, "clr")
        bounds = {name: config.get(f"clr.{name}") for name in ("base_lr", "max_lr")}
        for name, value in bounds.items():
            if isinstance(value, list):
                if len(value) != 1:
                    fail(f"--clr.{name}: tune needs one value, got {value!r}")
                bounds[name] = value[0]
        trainer_kwargs = dict(cli_get(self, self.config_init, "trainer", default={}))
        max_epochs = trainer_kwargs.pop("max_epochs", None)
        callbacks = trainer_kwargs.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]  # one callback from YAML
        trainer_kwargs["callbacks"] = [cb for cb in callbacks if isinstance(cb, Callback)]
        if isinstance(trainer_kwargs.get("logger"), bool) or trainer_kwargs.get("logger") is None:
            trainer_kwargs.pop("logger", None)  # each trial gets its own (the --output.logger flag)
        if verbose:  # --verbose=true: the trials' banners and model summaries too
            output = kwargs.get("output")
            kwargs["output"] = dataclasses.replace(output if isinstance(output, OutputConfig) else OutputConfig(),
                                                   verbose=True)
        search = kwargs.get("search")
        if isinstance(clr, CyclicLearningRate) and config.get("search.modes") == SearchSpace().modes:
            if clr.mode == "exp_range":
                fail("--clr.mode: tune searches 'triangular' and 'triangular2', got 'exp_range' (its gamma would"
                      " have to fit each trial's length)")
            if isinstance(search, SearchSpace):
                kwargs["search"] = dataclasses.replace(search, modes=(clr.mode,))
        try:
            import optuna  # noqa: F401
        except ImportError:
            fail("tune needs optuna, an optional dependency: `pip install lightning-clr[tune]`")
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
            fail(f"--{err.argument}: {err}")
        except StorageError as err:  # one line; the running trial is left to the next worker's heartbeat sweep
            print(f"lightning-clr: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        print_tune_result(result, config.get("output.output_dir"))
        return result

    def _factory(self, config: Any, key: str) -> Any:
        """A callable that builds a fresh ``key`` (model or data) from the parsed config, with the CLI's
        ``--optimizer``/``--lr_scheduler`` applied to a model, as LightningCLI does."""
        full = self.config.clone()  # the main parser instantiates, as LightningCLI.instantiate_classes does
        if self.subcommand:
            full[self.subcommand] = config

        def build(**_: Any) -> Any:
            obj = self._subconfig(self.parser.instantiate_classes(full)).get(key)
            if key == "model":  # LightningCLI's method works on self.model
                saved, self.model = self.model, obj
                try:
                    add_configure_optimizers(self, self.subcommand)
                finally:
                    self.model = saved
            return obj

        return build


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
        fail(str(err))

