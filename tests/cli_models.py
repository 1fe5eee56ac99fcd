"""Models for the command-line tests: the digits classifier, with every training step recorded in a file.

``StepCountingModel`` appends one line to the file named by ``$LIGHTNING_CLR_TEST_STEPS`` per training step,
so a test of a subprocess can tell that no training step ran before an error:
``lightning-clr fit --model cli_models.StepCountingModel --data examples.digits.DigitsDataModule`` with
``tests/`` and the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from examples.digits import DigitsClassifier

__all__ = ["StepCountingModel"]

STEPS_ENV = "LIGHTNING_CLR_TEST_STEPS"


class StepCountingModel(DigitsClassifier):
    """``DigitsClassifier`` that records each training step in ``$LIGHTNING_CLR_TEST_STEPS`` (if set)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        path = os.environ.get(STEPS_ENV)
        if path:
            with open(path, "a") as f:
                f.write(f"{batch_idx}\n")
        return super().training_step(batch, batch_idx)
