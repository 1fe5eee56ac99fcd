"""Lightning's banner muted for the tuner's trials: Lightning's own info lines go, lightning_clr's and every
warning stay, and the block form puts the loggers back as they were."""

from __future__ import annotations

import logging

import pytest
from helpers import TinyModel, loader, trainer

from lightning_clr._quiet import _BANNER_LOGGERS, muted_banner


def _banner(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in _BANNER_LOGGERS and r.levelno == logging.INFO]


def test_muted_banner_silences_lightnings_banner_inside_the_block_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with muted_banner():
        trainer(limit_train_batches=1).fit(TinyModel(), loader())
    assert _banner(caplog) == []
    filters = [list(logging.getLogger(name).filters) for name in _BANNER_LOGGERS]
    caplog.clear()
    trainer(limit_train_batches=1).fit(TinyModel(), loader())
    assert any("available" in line for line in _banner(caplog))  # "GPU available: False, ..."
    assert filters == [list(logging.getLogger(name).filters) for name in _BANNER_LOGGERS]


def test_muted_banner_keeps_our_info_lines_and_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logger = logging.getLogger(_BANNER_LOGGERS[0])
    with muted_banner():
        logger.info("lightning_clr: an info line of ours")  # logged from this file, not from Lightning's
        logger.warning("a warning")
    assert [r.getMessage() for r in caplog.records] == ["lightning_clr: an info line of ours", "a warning"]


def test_muted_banner_disabled_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with muted_banner(enabled=False):
        trainer(limit_train_batches=1).fit(TinyModel(), loader())
    assert any("available" in line for line in _banner(caplog))
