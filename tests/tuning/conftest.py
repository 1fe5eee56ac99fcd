"""Fixtures shared by the tuning tests."""

from __future__ import annotations

import uuid
from typing import Any

import optuna
import pytest
from tuning_helpers import PG_URL

from lightning_clr.tuning._storage import database_url  # direct Optuna calls: the driver the tuner would use


@pytest.fixture
def pg_study_name() -> Any:
    """A fresh study name on the test PostgreSQL database, deleted after the test."""
    name = f"lightning_clr_test_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=database_url(PG_URL))
    except KeyError:
        pass
