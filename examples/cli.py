"""A plain LightningCLI script on the digits example: the CLR callback comes from flags or a YAML config.

Nothing here is specific to lightning_clr: any LightningCLI script takes the callback the same way.
Run from anywhere:

    python examples/cli.py fit --config examples/cli_config.yaml
    python examples/cli.py fit --trainer.max_epochs 8 \\
        --trainer.callbacks+=lightning_clr.CyclicLearningRate \\
        --trainer.callbacks.mode=triangular2 --trainer.callbacks.step_size_up=46
    python examples/cli.py fit --trainer.callbacks+=lightning_clr.CyclicLearningRate --print_config

LightningCLI's own ``--lr_scheduler CyclicLR`` steps once per epoch (Lightning issue 15340); add the
callback and it takes over, stepping per optimizer step (with a warning). For one-line errors naming the
flag and the callback on by default, use ``lightning_clr.cli.LightningCLRCLI`` or the ``lightning-clr``
command instead of ``LightningCLI``.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from examples.digits import DigitsClassifier, DigitsDataModule  # noqa: E402


def main() -> None:
    LightningCLI(DigitsClassifier, DigitsDataModule)


if __name__ == "__main__":
    main()
