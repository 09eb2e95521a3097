"""rotate_secrets: every EncryptedTextField value ends up sealed under the newest key, still readable."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from apps.agents.models import Agent
from apps.bots.models import Bot
from apps.oauth.models import OAuthToken
from omniagent.crypto import generate_key, key_id_for, parse_key
from tests.factories import AgentFactory, BotFactory, OAuthTokenFactory

pytestmark = pytest.mark.django_db

OLD, NEW = generate_key(), generate_key()
OLD_ID, NEW_ID = key_id_for(parse_key(OLD)), key_id_for(parse_key(NEW))
COLUMNS = {
    "bots_bot": ("app_secret", "verification_token", "encrypt_key"),
    "agents_agent": ("api_key",),
    "oauth_oauthtoken": ("access_token", "refresh_token"),
}


def sealed_key_ids() -> list[str]:
    """The key id of every non-empty secret as stored, read with raw SQL."""
    ids = []
    with connection.cursor() as cursor:
        for table, columns in COLUMNS.items():
            for column in columns:
                cursor.execute(f"SELECT {column} FROM {table} WHERE {column} <> ''")
                ids += [value.split(":")[1] for (value,) in cursor.fetchall()]
    return ids


def rotate(*args) -> str:
    out = StringIO()
    call_command("rotate_secrets", *args, stdout=out)
    return out.getvalue()


def plaintexts() -> list:
    bot, agent, token = Bot.objects.get(), Agent.objects.get(), OAuthToken.objects.get()
    return [
        bot.app_secret,
        bot.verification_token,
        bot.encrypt_key,
        agent.api_key,
        token.access_token,
        token.refresh_token,
    ]


EXPECTED = [
    "app-secret-plaintext",
    "verification-token-plaintext",
    "encrypt-key-plaintext",
    "sk-test-agent-key",
    "u-access-token-plaintext",
    "u-refresh-token-plaintext",
]


@pytest.fixture
def sealed_under_old_key():
    with override_settings(OMNIAGENT_ENCRYPTION_KEYS=[OLD]):
        bot = BotFactory(encrypt_key="encrypt-key-plaintext")
        AgentFactory(tenant=bot.tenant)
        OAuthTokenFactory(bot=bot)
    assert set(sealed_key_ids()) == {OLD_ID}
    return bot


def test_it_keeps_values_sealed_under_an_old_key_readable_before_rotation(sealed_under_old_key):
    with override_settings(OMNIAGENT_ENCRYPTION_KEYS=[NEW, OLD]):
        assert plaintexts() == EXPECTED


def test_it_reseals_every_secret_under_the_newest_key(sealed_under_old_key):
    stamp = Bot.objects.values_list("updated_at", flat=True).get()
    with override_settings(OMNIAGENT_ENCRYPTION_KEYS=[NEW, OLD]):
        out = rotate()
        assert f"newest key: {NEW_ID}" in out
        assert "bots.Bot.app_secret: 1 re-encrypted" in out
        assert "total: 6 re-encrypted, 0 already current" in out
        assert set(sealed_key_ids()) == {NEW_ID}
        assert plaintexts() == EXPECTED
        # Rotation is not a content change.
        assert Bot.objects.values_list("updated_at", flat=True).get() == stamp
    # The old key can now leave the ring.
    with override_settings(OMNIAGENT_ENCRYPTION_KEYS=[NEW]):
        assert plaintexts() == EXPECTED


def test_it_changes_nothing_when_run_again(sealed_under_old_key):
    with override_settings(OMNIAGENT_ENCRYPTION_KEYS=[NEW, OLD]):
        rotate()
        with connection.cursor() as cursor:
            cursor.execute("SELECT app_secret FROM bots_bot")
            before = cursor.fetchall()
        out = rotate()
        assert "total: 0 re-encrypted, 6 already current" in out
        with connection.cursor() as cursor:
            cursor.execute("SELECT app_secret FROM bots_bot")
            assert cursor.fetchall() == before


def test_it_only_counts_on_dry_run(sealed_under_old_key):
    with override_settings(OMNIAGENT_ENCRYPTION_KEYS=[NEW, OLD]):
        assert "total: 6 re-encrypted" in rotate("--dry-run")
    assert set(sealed_key_ids()) == {OLD_ID}


def test_it_fails_loudly_when_a_value_was_sealed_by_a_key_no_longer_in_the_ring(sealed_under_old_key):
    with (
        override_settings(OMNIAGENT_ENCRYPTION_KEYS=[NEW]),
        pytest.raises(CommandError, match="6 values could not be decrypted"),
    ):
        rotate()
    assert set(sealed_key_ids()) == {OLD_ID}
