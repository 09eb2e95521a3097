from django.db import connection

from omniagent.crypto import build_ring, generate_key
from tests.factories import AgentFactory, BotFactory, OAuthTokenFactory


def _raw_rows(table: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
        return repr(cursor.fetchall())


def test_it_stores_no_plaintext_secret_in_bot_agent_and_oauth_rows(db):
    bot = BotFactory(encrypt_key="encrypt-key-plaintext")
    AgentFactory(tenant=bot.tenant)
    OAuthTokenFactory(bot=bot)
    raw = _raw_rows("bots_bot") + _raw_rows("agents_agent") + _raw_rows("oauth_oauthtoken")
    for secret in (
        "app-secret-plaintext",
        "verification-token-plaintext",
        "encrypt-key-plaintext",
        "sk-test-agent-key",
        "u-access-token-plaintext",
        "u-refresh-token-plaintext",
    ):
        assert secret not in raw
    bot.refresh_from_db()
    assert bot.app_secret == "app-secret-plaintext"


def test_it_uses_a_fresh_nonce_for_every_value():
    ring = build_ring([generate_key()])
    assert ring.encrypt("same") != ring.encrypt("same")
    assert ring.decrypt(ring.encrypt("same")) == "same"
