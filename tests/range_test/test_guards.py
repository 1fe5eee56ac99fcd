"""What the range test refuses before any step."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyModel, trainer
from range_test_helpers import cfg

from lightning_clr.range_test import run_range_test


def test_range_test_outside_a_fit_is_refused() -> None:
    model = TinyModel()
    tr = trainer()
    model.trainer = tr
    with pytest.raises(ValueError, match="exactly one optimizer|running fit"):
        run_range_test(tr, model, cfg())


def test_sharded_strategy_is_refused_by_name() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_clr.range_test import refuse_sharded

    with pytest.raises(ValueError, match="FSDPStrategy"):
        refuse_sharded(FSDPStrategy())



def test_a_subclass_of_a_sharded_strategy_is_refused_and_ddp_is_not() -> None:
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from lightning_clr.range_test import refuse_sharded

    class MyFSDP(FSDPStrategy):
        pass

    with pytest.raises(ValueError, match=r"sharded strategy MyFSDP \(a FSDPStrategy\)"):
        refuse_sharded(MyFSDP())
    assert refuse_sharded(DDPStrategy()) is None


def test_configured_lrs_name_the_group_and_accept_0d_tensors() -> None:
    from torch import nn

    from lightning_clr.range_test._guards import configured_lrs

    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    opt = torch.optim.Adam([{"params": a.parameters(), "lr": torch.tensor(1e-3)}, {"params": b.parameters()}], lr=0.1)
    assert configured_lrs(opt) == [pytest.approx(1e-3), 0.1]
    opt.param_groups[1]["lr"] = "0.1"
    with pytest.raises(ValueError, match=r"`Adam.param_groups\[1\]\['lr'\]` must be a finite number > 0 .*got '0.1'"):
        configured_lrs(opt)
