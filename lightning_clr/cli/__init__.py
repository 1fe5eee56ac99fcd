"""The ``lightning-clr`` command: a LightningCLI with the CyclicLearningRate callback on by default.

Subcommands: ``fit``, ``validate``, ``test`` and ``predict`` as in any LightningCLI, plus
``range_test`` (alias ``range-test``: the LR range test alone; prints both bounds and saves the curve as
JSON and PNG) and ``tune`` (Optuna tuning of the cycle length with :func:`lightning_clr.tune_cycle_length`).
The callback's arguments are flags under ``--clr.*`` (``--clr.mode triangular2``,
``--clr.range_test.num_steps 200``); ``--no_clr`` switches it off. Every error is one line that names the
full flag, with exit status 2, before anything trains.

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

from lightning_clr.cli._app import LightningCLRCLI, main

__all__ = ["LightningCLRCLI", "main"]
