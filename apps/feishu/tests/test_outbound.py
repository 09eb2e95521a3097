"""outbound_send / outbound_retry: the logged send path, checked against what the fake Feishu received."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.feishu.models import OutboundMessage
from apps.feishu.outbound import RetryTooLate, outbound_retry, outbound_send, outbound_uuid
from tests.factories import ConversationFactory

# Until the root conftest has `pytest_plugins = ["tests.fakes.fixtures"]`, import the fixtures here
# (pytest finds fixtures by name; the test parameters shadow these imports on purpose).

pytestmark = pytest.mark.django_db

REPLY_PATH = r"/im/v1/messages/om_[^/]+/reply$"


@pytest.fixture(autouse=True)
def _fast_backoff(settings):
    settings.FEISHU_RETRY_BASE_DELAY = 0.01


def send_reply(bot, *, uuid: str, text: str = "the answer", **extra) -> OutboundMessage:
    return outbound_send(
        bot=bot, uuid=uuid, operation="reply", receive_id="om_inbound_1", msg_type="text", content={"text": text},
        **extra,
    )  # fmt: skip


def test_outbound_uuid_is_deterministic_and_fits_feishu():
    first = outbound_uuid("om_inbound_1", 0)
    assert first == outbound_uuid("om_inbound_1", 0)
    assert first != outbound_uuid("om_inbound_1", 1)
    assert first != outbound_uuid("om_inbound_2", 0)
    assert len(first) <= 50


def test_it_records_and_sends_a_reply(feishu_bot, fake_feishu):
    conversation = ConversationFactory(tenant=feishu_bot.tenant)
    uuid = outbound_uuid("om_inbound_1", 0)

    row = send_reply(feishu_bot, uuid=uuid, conversation=conversation, trace_id="trace-1")

    [message] = fake_feishu.messages
    assert message["parent_id"] == "om_inbound_1"
    assert message["content"] == {"text": "the answer"}
    assert message["uuid"] == uuid
    row.refresh_from_db()
    assert row.status == OutboundMessage.Status.SENT
    assert row.feishu_message_id == message["message_id"]
    assert (row.attempts, row.last_error, row.trace_id) == (1, "", "trace-1")
    assert row.sent_at is not None
    assert (row.tenant_id, row.conversation_id) == (feishu_bot.tenant_id, conversation.pk)


def test_a_repeated_send_with_the_same_uuid_is_not_sent_again(feishu_bot, fake_feishu):
    uuid = outbound_uuid("om_inbound_1", 0)
    first = send_reply(feishu_bot, uuid=uuid)
    requests_after_first = len(fake_feishu.requests_to(REPLY_PATH))

    second = send_reply(feishu_bot, uuid=uuid)

    assert second.pk == first.pk
    assert len(fake_feishu.requests_to(REPLY_PATH)) == requests_after_first == 1
    assert len(fake_feishu.messages) == 1
    assert OutboundMessage.objects.filter(bot=feishu_bot).count() == 1


def test_it_sends_a_new_message_to_a_chat(feishu_bot, fake_feishu):
    row = outbound_send(
        bot=feishu_bot, uuid=outbound_uuid("welcome", "oc_group_1"), operation="create", receive_id="oc_group_1",
        receive_id_type="chat_id", msg_type="post",
        content={"zh_cn": {"title": "Hi", "content": [[{"tag": "text", "text": "I am here"}]]}},
    )  # fmt: skip

    [message] = fake_feishu.messages
    assert (message["chat_id"], message["msg_type"]) == ("oc_group_1", "post")
    assert row.status == OutboundMessage.Status.SENT and row.feishu_message_id == message["message_id"]


def test_rate_limited_twice_then_the_reply_arrives_once(feishu_bot, fake_feishu):
    fake_feishu.inject_rate_limit(times=2, reset=0, path=REPLY_PATH)

    row = send_reply(feishu_bot, uuid=outbound_uuid("om_inbound_1", 0))

    assert [r.status for r in fake_feishu.requests_to(REPLY_PATH)] == [429, 429, 200]
    assert len(fake_feishu.messages) == 1
    assert row.status == OutboundMessage.Status.SENT


def test_a_rejected_token_is_refreshed_and_the_reply_arrives_once(feishu_bot, fake_feishu):
    send_reply(feishu_bot, uuid=outbound_uuid("om_inbound_0", 0))
    fake_feishu.invalidate_tokens()

    row = send_reply(feishu_bot, uuid=outbound_uuid("om_inbound_1", 0))

    assert [r.code for r in fake_feishu.requests_to(REPLY_PATH)] == [0, 99991663, 0]
    assert len(fake_feishu.token_requests) == 2
    assert len(fake_feishu.messages) == 2
    assert row.status == OutboundMessage.Status.SENT


def test_bad_content_fails_visibly_without_retry_and_can_be_retried_later(feishu_bot, fake_feishu):
    fake_feishu.inject_error(230001, path=REPLY_PATH, msg="invalid message content")
    uuid = outbound_uuid("om_inbound_1", 0)

    row = send_reply(feishu_bot, uuid=uuid)

    row.refresh_from_db()
    [attempt] = fake_feishu.requests_to(REPLY_PATH)
    assert row.status == OutboundMessage.Status.FAILED
    assert row.attempts == 1
    assert "230001" in row.last_error and attempt.log_id in row.last_error
    assert fake_feishu.messages == []

    fake_feishu.clear_faults()
    retried = outbound_retry(outbound=row)

    retried.refresh_from_db()
    [message] = fake_feishu.messages
    assert retried.status == OutboundMessage.Status.SENT
    assert (retried.attempts, retried.last_error) == (2, "")
    assert retried.feishu_message_id == message["message_id"]
    assert [r.json["uuid"] for r in fake_feishu.requests_to(REPLY_PATH)] == [uuid, uuid]


def test_a_send_failing_after_all_retries_shows_why_in_the_row(feishu_bot, fake_feishu, settings):
    settings.FEISHU_MAX_RETRIES = 1
    fake_feishu.inject_server_error(times=5, status=503, path=REPLY_PATH)

    row = send_reply(feishu_bot, uuid=outbound_uuid("om_inbound_1", 0))

    row.refresh_from_db()
    assert row.status == OutboundMessage.Status.FAILED
    assert "http 503" in row.last_error and "2 attempts" in row.last_error
    assert len(fake_feishu.requests_to(REPLY_PATH)) == 2
    assert fake_feishu.messages == []


def test_a_send_whose_answer_was_lost_is_retried_without_a_duplicate(feishu_bot, fake_feishu, settings):
    settings.FEISHU_HTTP_TIMEOUT = 1
    settings.FEISHU_MAX_RETRIES = 0
    fake_feishu.inject_slow_answer(1.5, times=1, path=REPLY_PATH)

    row = send_reply(feishu_bot, uuid=outbound_uuid("om_inbound_1", 0))
    fake_feishu.wait_idle()

    assert row.status == OutboundMessage.Status.FAILED
    assert "timeout" in row.last_error
    [message] = fake_feishu.messages  # it did reach Feishu

    retried = outbound_retry(outbound=row)

    assert retried.status == OutboundMessage.Status.SENT
    assert retried.feishu_message_id == message["message_id"]
    assert len(fake_feishu.messages) == 1


def test_a_send_older_than_feishus_dedupe_hour_is_not_retried(feishu_bot, fake_feishu, settings):
    settings.FEISHU_MAX_RETRIES = 0
    fake_feishu.inject_server_error(times=1, path=REPLY_PATH)
    row = send_reply(feishu_bot, uuid=outbound_uuid("om_inbound_1", 0))
    assert row.status == OutboundMessage.Status.FAILED
    OutboundMessage.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(hours=1))
    row.refresh_from_db()
    tried = len(fake_feishu.requests_to(REPLY_PATH))

    with pytest.raises(RetryTooLate):
        outbound_retry(outbound=row)

    assert len(fake_feishu.requests_to(REPLY_PATH)) == tried
    row.refresh_from_db()
    assert row.status == OutboundMessage.Status.FAILED and row.attempts == 1


def test_retrying_a_sent_message_does_nothing(feishu_bot, fake_feishu):
    row = send_reply(feishu_bot, uuid=outbound_uuid("om_inbound_1", 0))

    again = outbound_retry(outbound=row)

    assert again.status == OutboundMessage.Status.SENT and again.attempts == 1
    assert len(fake_feishu.requests_to(REPLY_PATH)) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_of_one_uuid_make_one_message(feishu_bot, fake_feishu):
    uuid = outbound_uuid("om_inbound_1", 0)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            send_reply(feishu_bot, uuid=uuid)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert errors == []
    assert len(fake_feishu.messages) == 1
    [row] = OutboundMessage.objects.filter(bot=feishu_bot)
    assert row.status == OutboundMessage.Status.SENT
    assert row.feishu_message_id == fake_feishu.messages[0]["message_id"]


def test_it_refuses_a_uuid_feishu_would_reject(feishu_bot, fake_feishu):
    with pytest.raises(ValueError):
        send_reply(feishu_bot, uuid="x" * 51)
    assert OutboundMessage.objects.count() == 0
    assert fake_feishu.requests == []


@pytest.mark.slow
def test_the_logged_send_works_the_same_on_the_embedded_sqlite(fake_feishu, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import django, json; django.setup()\n"
        "from django.core.management import call_command; call_command('migrate', verbosity=0)\n"
        "from apps.feishu.models import OutboundMessage\n"
        "from apps.feishu.outbound import outbound_send\n"
        "from tests.factories import BotFactory\n"
        f"bot = BotFactory(base_url={fake_feishu.base_url!r})\n"
        "send = lambda: outbound_send(bot=bot, uuid='sqlite-1', operation='reply', receive_id='om_in',"
        " msg_type='text', content={'text': 'hi'})\n"
        "first, again = send(), send()\n"
        "row = OutboundMessage.objects.get()\n"
        "print(json.dumps([first.pk, again.pk, row.pk, row.status, row.attempts, row.feishu_message_id,"
        " row.sent_at is not None]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"DJANGO_SETTINGS_MODULE": "omniagent.settings", "OMNIAGENT_DATA_DIR": str(tmp_path), "LOG_LEVEL": "error"}
    root = Path(__file__).resolve().parents[3]

    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)

    assert out.returncode == 0, out.stderr[-2000:]
    first, again, row, status, attempts, message_id, sent = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == again == row and (status, attempts, sent) == ("sent", 1, True)
    [message] = fake_feishu.messages
    assert message_id == message["message_id"]
