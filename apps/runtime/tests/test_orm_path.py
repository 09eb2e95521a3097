"""The runner and turn tests again on the portable ORM path (the embedded default's SQLite has no
single-statement path; apps.runtime.store.SINGLE_STATEMENTS off runs that path on PostgreSQL)."""

from __future__ import annotations

import pytest

from apps.runtime import store

from .test_memory_and_commands import *  # noqa: F403
from .test_runner import *  # noqa: F403
from .test_turn import *  # noqa: F403


@pytest.fixture(autouse=True)
def _orm_path(monkeypatch):
    monkeypatch.setattr(store, "SINGLE_STATEMENTS", False)
