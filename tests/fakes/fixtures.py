"""pytest fixtures for the fake Feishu Open API.

Enable suite-wide with `pytest_plugins = ["tests.fakes.fixtures"]` in the root conftest.py, or import
the fixtures in a test module: `from tests.fakes.fixtures import fake_feishu, fake_feishu_server  # noqa: F401`.
"""

from __future__ import annotations

import pytest

from tests.fakes.feishu import FakeFeishu


@pytest.fixture(scope="session")
def fake_feishu_server():
    """One fake Feishu server (background thread) for the whole test session."""
    server = FakeFeishu().start()
    yield server
    server.stop()


@pytest.fixture
def fake_feishu(fake_feishu_server):
    """The fake Feishu server, reset to a clean state (no requests, messages, tokens, faults) per test."""
    from apps.feishu.client import token_cache

    fake_feishu_server.reset()
    token_cache.forget_local()  # the fake forgot its tokens; so must this process
    yield fake_feishu_server
    fake_feishu_server.reset()


@pytest.fixture
def feishu_bot(db, fake_feishu):
    """A bot whose base_url points at the fake, registered there with its app secret."""
    from tests.factories import BotFactory

    bot = BotFactory(base_url=fake_feishu.base_url)
    fake_feishu.add_app(bot.app_id, bot.app_secret, open_id=bot.bot_open_id)
    return bot
