"""Webhook ingress: Feishu-exact encrypted/signed events accepted once; every bad variant a 4xx without rows."""

from __future__ import annotations

import json
import time

import pytest
from django.conf import settings
from django.test import Client
from lark_oapi.core.utils.decryptor import AESCipher

from apps.bindings.models import Binding
from apps.feishu import ingest
from apps.feishu.events import event_encrypt, event_sign
from apps.transcripts.models import Conversation, InboundEvent, Message
from tests.factories import AgentFactory, BindingFactory, BotFactory, ConversationFactory, MessageFactory
from tests.fakes.feishu_ws import (
    CeleryQueue,
    bot_added_event,
    card_action_event,
    django_headers,
    mention,
    message_event,
    url_verification,
    webhook_request,
)

ENCRYPT_KEY = "kL9cV0pXw3TzR7uQ"


@pytest.fixture
def bot(db):
    return BotFactory(encrypt_key=ENCRYPT_KEY, bot_open_id="ou_bot_self")


@pytest.fixture
def binding(bot):
    return BindingFactory(bot=bot, chat_type=Binding.ChatType.ANY, require_mention=True)


@pytest.fixture(params=["single_statement", "orm"])
def write_path(request, monkeypatch):
    """Both ways of writing a message: one PostgreSQL statement, and the portable ORM transaction."""
    monkeypatch.setattr(ingest, "SINGLE_STATEMENT", request.param == "single_statement")
    return request.param


@pytest.fixture
def queued(settings):
    """Conversation ids handed to the real dispatch (Celery on this test's Redis database), in order."""
    settings.TASK_RUNNER = "celery"
    queue = CeleryQueue(settings.CELERY_BROKER_URL)
    queue.clear()
    yield queue.conversations
    queue.clear()


def post(client, bot, payload, *, encrypt_key=ENCRYPT_KEY, headers=None, body=None, app_id=None):
    raw, feishu_headers = webhook_request(payload, encrypt_key=encrypt_key)
    if headers is not None:
        feishu_headers = headers
    return client.post(
        f"/webhooks/feishu/{app_id or bot.app_id}/",
        data=body if body is not None else raw,
        content_type="application/json",
        **django_headers(feishu_headers),
    )


def deliver(client, bot, payload, django_capture_on_commit_callbacks, **kwargs):
    with django_capture_on_commit_callbacks(execute=True):
        return post(client, bot, payload, **kwargs)


def no_rows() -> bool:
    return not (InboundEvent.objects.exists() or Message.objects.exists() or Conversation.objects.exists())


# --- crypto matches Feishu / lark-oapi ----------------------------------------------------------


def test_it_encrypts_exactly_as_lark_oapi_decrypts():
    payload = json.dumps({"schema": "2.0", "text": "你好, Feishu"}, ensure_ascii=False)
    ciphertext = event_encrypt(encrypt_key=ENCRYPT_KEY, plaintext=payload)
    assert AESCipher(ENCRYPT_KEY).decrypt_str(ciphertext) == payload


def test_it_accepts_the_example_from_feishu_docs(client, db):
    # The sample in Feishu's "Encrypt Key" docs: key "test key", plaintext "hello world".
    bot = BotFactory(encrypt_key="test key")
    ciphertext = "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="
    assert AESCipher("test key").decrypt_str(ciphertext) == "hello world"
    response = post(client, bot, None, headers={}, body=json.dumps({"encrypt": ciphertext}))
    # Decrypts fine ("hello world"), which is not JSON: a 400, not a crypto failure, no rows.
    assert response.status_code == 400
    assert response.json()["error"] == "cannot decrypt body: Expecting value: line 1 column 1 (char 0)"
    assert no_rows()


# --- the happy path ---------------------------------------------------------------------------


def test_it_accepts_an_encrypted_signed_message_and_enqueues_one_turn(
    client, bot, binding, queued, write_path, django_capture_on_commit_callbacks
):
    payload = message_event(app_id=bot.app_id, text="查一下上周的案件", chat_id="oc_p2p_42")
    response = deliver(client, bot, payload, django_capture_on_commit_callbacks)

    assert response.status_code == 200
    assert response.json() == {"msg": "success"}
    event = InboundEvent.objects.get()
    assert (event.event_id, event.source, event.status) == (payload["header"]["event_id"], "webhook", "accepted")
    assert "token" not in event.payload["header"]  # the verification token is not kept at rest
    message = Message.objects.get()
    assert message.status == Message.Status.PENDING
    assert message.content == "查一下上周的案件"
    assert message.external_id == payload["event"]["message"]["message_id"]
    assert message.sender_open_id == "ou_user_1"
    assert message.trace_id == event.trace_id != ""
    conversation = message.conversation
    assert conversation.key == f"feishu:{bot.pk}:oc_p2p_42"
    assert (conversation.chat_type, conversation.agent_id, conversation.tenant_id) == (
        "p2p",
        binding.agent_id,
        bot.tenant_id,
    )
    assert conversation.last_activity_at is not None
    assert queued() == [conversation.pk]
    bot.refresh_from_db()
    assert bot.last_event_at is not None


def test_it_accepts_a_plain_event_when_the_bot_has_no_encrypt_key(
    client, db, queued, django_capture_on_commit_callbacks
):
    bot = BotFactory(encrypt_key="")
    BindingFactory(bot=bot)
    response = deliver(
        client, bot, message_event(app_id=bot.app_id), django_capture_on_commit_callbacks, encrypt_key=""
    )
    assert response.status_code == 200
    assert Message.objects.get().status == Message.Status.PENDING
    assert len(queued()) == 1


def test_it_is_csrf_exempt_for_feishu(bot, binding):
    client = Client(enforce_csrf_checks=True)
    assert post(client, bot, message_event(app_id=bot.app_id)).status_code == 200


def test_it_refuses_get(client, bot):
    assert client.get(f"/webhooks/feishu/{bot.app_id}/").status_code == 405


# --- dedupe -----------------------------------------------------------------------------------


def test_it_answers_a_redelivered_event_200_and_does_nothing_else(
    client, bot, binding, queued, write_path, django_capture_on_commit_callbacks
):
    payload = message_event(app_id=bot.app_id)
    answers = [deliver(client, bot, payload, django_capture_on_commit_callbacks) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert InboundEvent.objects.count() == 1
    assert Message.objects.filter(role="user").count() == 1
    assert len(queued()) == 1


def test_it_treats_the_same_message_under_another_event_id_as_a_duplicate(
    client, bot, binding, queued, write_path, django_capture_on_commit_callbacks
):
    first = message_event(app_id=bot.app_id, message_id="om_same")
    again = message_event(app_id=bot.app_id, message_id="om_same")
    assert deliver(client, bot, first, django_capture_on_commit_callbacks).status_code == 200
    assert deliver(client, bot, again, django_capture_on_commit_callbacks).status_code == 200

    assert Message.objects.count() == 1
    assert sorted(InboundEvent.objects.values_list("status", flat=True)) == ["accepted", "duplicate"]
    assert len(queued()) == 1


# --- rejections: 4xx, reason, no rows ---------------------------------------------------------


def _signed(body: bytes, *, ts: int | None = None, key: str = ENCRYPT_KEY, nonce: str = "n0nce") -> dict:
    ts = ts if ts is not None else int(time.time())
    return {
        "X-Lark-Request-Timestamp": str(ts),
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": event_sign(timestamp=str(ts), nonce=nonce, encrypt_key=key, body=body),
    }


def _encrypted(payload, key=ENCRYPT_KEY) -> bytes:
    return json.dumps({"encrypt": event_encrypt(encrypt_key=key, plaintext=json.dumps(payload))}).encode()


def bad_variants(app_id: str) -> dict[str, tuple[int, bytes, dict]]:
    good = message_event(app_id=app_id)
    body = _encrypted(good)
    stale_ts = int(time.time()) - settings.FEISHU_WEBHOOK_REPLAY_WINDOW - 60
    wrong_token = _encrypted(message_event(app_id=app_id, token="not-the-token"))
    v1 = _encrypted(
        {
            "uuid": "u1",
            "token": "verification-token-plaintext",
            "ts": "1",
            "type": "event_callback",
            "event": {"type": "message"},
        }
    )
    not_json = json.dumps({"encrypt": event_encrypt(encrypt_key=ENCRYPT_KEY, plaintext="{not json")}).encode()
    no_event_id = message_event(app_id=app_id)
    del no_event_id["header"]["event_id"]
    no_event_id_body = _encrypted(no_event_id)
    return {
        "bad json": (400, b"{not json", _signed(b"{not json")),
        "json array": (400, b"[1, 2]", _signed(b"[1, 2]")),
        "bad signature": (401, body, {**_signed(body), "X-Lark-Signature": "0" * 64}),
        "signed with another key": (401, body, _signed(body, key="another-key")),
        "unsigned": (401, body, {}),
        "stale timestamp": (401, body, _signed(body, ts=stale_ts)),
        "future timestamp": (401, body, _signed(body, ts=int(time.time()) + 3600)),
        "wrong token": (401, wrong_token, _signed(wrong_token)),
        "bad ciphertext": (
            400,
            b'{"encrypt": "bm90IGEgY2lwaGVydGV4dA=="}',
            _signed(b'{"encrypt": "bm90IGEgY2lwaGVydGV4dA=="}'),
        ),
        "not base64": (400, b'{"encrypt": "%%%"}', _signed(b'{"encrypt": "%%%"}')),
        "wrong encrypt key": (400, _encrypted(good, key="other"), _signed(_encrypted(good, key="other"))),
        "plaintext is not json": (400, not_json, _signed(not_json)),
        "schema 1.0 event": (400, v1, _signed(v1)),
        "no event id": (400, no_event_id_body, _signed(no_event_id_body)),
    }


@pytest.mark.parametrize("variant", list(bad_variants("cli_x")))
def test_it_rejects_malformed_requests_with_a_4xx_and_no_rows(client, bot, binding, variant, caplog):
    status, body, headers = bad_variants(bot.app_id)[variant]
    response = client.post(
        f"/webhooks/feishu/{bot.app_id}/", data=body, content_type="application/json", **django_headers(headers)
    )

    assert response.status_code == status, response.content
    assert response.json()["error"]
    assert no_rows()
    if "sign" in variant:
        assert response.json()["code"] == "WEBHOOK_001"
        assert "WEBHOOK_001" in caplog.text


def test_it_rejects_a_body_over_the_size_limit_with_413(client, bot, settings):
    settings.FEISHU_WEBHOOK_MAX_BYTES = 2048
    payload = message_event(app_id=bot.app_id, text="x" * 4000)
    response = post(client, bot, payload)
    assert response.status_code == 413
    assert "larger" in response.json()["error"]
    assert no_rows()


@pytest.mark.parametrize("case", ["unknown", "inactive bot", "inactive tenant"])
def test_it_answers_404_for_an_unknown_or_inactive_app(client, bot, case):
    if case == "inactive bot":
        bot.is_active = False
        bot.save()
    if case == "inactive tenant":
        bot.tenant.is_active = False
        bot.tenant.save()
    app_id = "cli_nobody" if case == "unknown" else bot.app_id
    response = post(client, bot, message_event(app_id=app_id), app_id=app_id)
    assert response.status_code == 404
    assert response.json() == {"error": "unknown app_id"}
    assert no_rows()


def test_it_rejects_an_event_for_another_app(client, bot):
    response = post(client, bot, message_event(app_id="cli_someone_else"))
    assert response.status_code == 400
    assert no_rows()


# --- url verification -------------------------------------------------------------------------


def test_it_answers_the_url_challenge(client, db):
    bot = BotFactory(encrypt_key="")
    response = post(client, bot, url_verification(challenge="c-123"), encrypt_key="")
    assert response.status_code == 200
    assert response.json() == {"challenge": "c-123"}
    assert no_rows()


def test_it_answers_an_encrypted_unsigned_url_challenge(client, bot):
    body = _encrypted(url_verification(challenge="c-enc"))
    response = client.post(f"/webhooks/feishu/{bot.app_id}/", data=body, content_type="application/json")
    assert response.json() == {"challenge": "c-enc"}


def test_it_refuses_the_url_challenge_with_a_wrong_token(client, db):
    bot = BotFactory(encrypt_key="")
    response = post(client, bot, url_verification(token="guess"), encrypt_key="")
    assert response.status_code == 401
    assert "challenge" not in response.json()


# --- who gets answered ------------------------------------------------------------------------


def test_it_ignores_a_group_message_without_mention_on_a_require_mention_binding(
    client, bot, binding, queued, django_capture_on_commit_callbacks
):
    payload = message_event(app_id=bot.app_id, chat_type="group", chat_id="oc_group", text="大家早")
    assert deliver(client, bot, payload, django_capture_on_commit_callbacks).status_code == 200

    message = Message.objects.get()
    assert (message.status, message.error_code) == (Message.Status.IGNORED, "not_mentioned")
    assert InboundEvent.objects.get().status == "ignored"
    assert queued() == []


def test_it_answers_a_group_message_that_mentions_the_bot_with_the_placeholder_stripped(
    client, bot, binding, queued, write_path, django_capture_on_commit_callbacks
):
    payload = message_event(
        app_id=bot.app_id,
        chat_type="group",
        chat_id="oc_group",
        text="@_user_1 帮我查 @_user_2 的案件",
        mentions=[mention("@_user_1", "ou_bot_self", "案件助手"), mention("@_user_2", "ou_lawyer", "张律师")],
    )
    assert deliver(client, bot, payload, django_capture_on_commit_callbacks).status_code == 200

    message = Message.objects.get()
    assert message.status == Message.Status.PENDING
    assert message.content == "帮我查 @张律师 的案件"
    assert [m["open_id"] for m in message.mentions] == ["ou_bot_self", "ou_lawyer"]
    assert queued() == [message.conversation_id]


def test_it_does_not_count_at_all_as_a_mention(client, bot, binding, queued, django_capture_on_commit_callbacks):
    payload = message_event(app_id=bot.app_id, chat_type="group", chat_id="oc_group", text="@_all 下午开会")
    deliver(client, bot, payload, django_capture_on_commit_callbacks)
    assert Message.objects.get().status == Message.Status.IGNORED
    assert queued() == []


def test_it_answers_a_group_without_mention_when_the_binding_does_not_require_one(
    client, bot, queued, django_capture_on_commit_callbacks
):
    BindingFactory(bot=bot, chat_type=Binding.ChatType.GROUP, require_mention=False)
    payload = message_event(app_id=bot.app_id, chat_type="group", chat_id="oc_group", text="hi")
    deliver(client, bot, payload, django_capture_on_commit_callbacks)
    assert Message.objects.get().status == Message.Status.PENDING
    assert len(queued()) == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"sender_type": "app", "sender_open_id": "ou_other_bot"}, "sender_is_bot"),
        ({"sender_open_id": "ou_bot_self"}, "sender_is_self"),
    ],
)
def test_it_ignores_messages_from_bots(
    client, bot, binding, queued, django_capture_on_commit_callbacks, kwargs, reason
):
    deliver(client, bot, message_event(app_id=bot.app_id, **kwargs), django_capture_on_commit_callbacks)
    message = Message.objects.get()
    assert (message.status, message.error_code) == (Message.Status.IGNORED, reason)
    assert queued() == []


def test_it_ignores_a_chat_without_binding(client, bot, queued, django_capture_on_commit_callbacks):
    deliver(client, bot, message_event(app_id=bot.app_id), django_capture_on_commit_callbacks)
    assert Message.objects.get().error_code == "no_binding"
    assert InboundEvent.objects.get().status_reason == "no_binding"
    assert queued() == []


def test_it_records_but_does_not_answer_an_event_older_than_the_max_age(
    client, bot, binding, queued, django_capture_on_commit_callbacks, settings
):
    old = int((time.time() - settings.FEISHU_EVENT_MAX_AGE - 60) * 1000)
    deliver(client, bot, message_event(app_id=bot.app_id, create_time_ms=old), django_capture_on_commit_callbacks)
    assert InboundEvent.objects.get().status == "stale"
    assert Message.objects.get().status == Message.Status.IGNORED
    assert queued() == []


def test_it_keys_group_threads_separately_and_p2p_per_chat(
    client, bot, queued, write_path, django_capture_on_commit_callbacks
):
    BindingFactory(bot=bot, require_mention=False)
    for kwargs in (
        {"chat_type": "group", "chat_id": "oc_g"},
        {"chat_type": "group", "chat_id": "oc_g", "thread_id": "omt_1"},
        {"chat_type": "group", "chat_id": "oc_g", "thread_id": "omt_1"},
        {"chat_type": "p2p", "chat_id": "oc_p"},
        {"chat_type": "p2p", "chat_id": "oc_p"},
    ):
        deliver(client, bot, message_event(app_id=bot.app_id, **kwargs), django_capture_on_commit_callbacks)
    keys = sorted(Conversation.objects.values_list("key", flat=True))
    assert keys == [f"feishu:{bot.pk}:oc_g", f"feishu:{bot.pk}:oc_g:omt_1", f"feishu:{bot.pk}:oc_p"]
    assert Message.objects.count() == 5
    assert len(queued()) == 5


# --- card actions -----------------------------------------------------------------------------


def _answer(bot, **kwargs):
    conversation = ConversationFactory(tenant=bot.tenant, bot=bot, key=f"feishu:{bot.pk}:oc_c")
    return MessageFactory(conversation=conversation, role=Message.Role.ASSISTANT, bot=bot, **kwargs)


def test_it_records_thumbs_down_feedback_and_returns_a_toast(client, bot):
    answer = _answer(bot)
    payload = card_action_event(
        app_id=bot.app_id, value={"feedback": "down", "message_id": answer.pk}, operator_open_id="ou_rater"
    )
    response = post(client, bot, payload)

    assert response.status_code == 200
    assert response.json() == {"toast": {"type": "success", "content": "感谢反馈"}}
    answer.refresh_from_db()
    assert (answer.feedback, answer.feedback_by) == ("down", "ou_rater")
    assert answer.feedback_at is not None
    assert InboundEvent.objects.get().event_type == "card.action.trigger"


def test_it_cannot_rate_another_tenants_answer(client, bot):
    stranger = _answer(BotFactory())
    payload = card_action_event(app_id=bot.app_id, value={"feedback": "up", "message_id": stranger.pk})
    response = post(client, bot, payload)

    assert response.status_code == 200
    assert response.json()["toast"]["type"] == "error"
    stranger.refresh_from_db()
    assert stranger.feedback == ""


def test_it_cannot_rate_a_user_message(client, bot):
    user_message = _answer(bot)
    Message.objects.filter(pk=user_message.pk).update(role=Message.Role.USER)
    response = post(
        client, bot, card_action_event(app_id=bot.app_id, value={"feedback": "up", "message_id": user_message.pk})
    )
    assert response.json()["toast"]["type"] == "error"
    user_message.refresh_from_db()
    assert user_message.feedback == ""


# --- bot added --------------------------------------------------------------------------------


def test_it_records_bot_added_without_welcome_when_the_binding_has_none(client, bot):
    BindingFactory(bot=bot, chat_type=Binding.ChatType.GROUP, welcome_message="")
    assert post(client, bot, bot_added_event(app_id=bot.app_id)).status_code == 200
    event = InboundEvent.objects.get()
    assert (event.status, event.status_reason) == ("ignored", "no_welcome_message")


def test_it_uses_the_tenant_of_the_bot_for_every_row(client, bot, binding, django_capture_on_commit_callbacks):
    AgentFactory()  # another tenant's agent exists; nothing must point at it
    deliver(client, bot, message_event(app_id=bot.app_id), django_capture_on_commit_callbacks)
    assert {
        InboundEvent.objects.get().tenant_id,
        Message.objects.get().tenant_id,
        Conversation.objects.get().tenant_id,
    } == {bot.tenant_id}
