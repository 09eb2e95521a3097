"""pytest fixtures for the fake LLM: one server per test session, scripts reset per test.

Use in a conftest.py: ``from tests.fakes.llm_fixtures import fake_llm, fake_llm_server  # noqa: F401``
"""

from __future__ import annotations

import pytest

from tests.fakes.llm import FakeLLM


@pytest.fixture(scope="session")
def fake_llm_server():
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLM) -> FakeLLM:
    """The running fake LLM (``.base_url``, ``.script(...)``, ``.requests``), clean for this test."""
    fake_llm_server.reset()
    yield fake_llm_server
    fake_llm_server.reset()
