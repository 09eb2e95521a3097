"""FeishuClient against the fake Feishu server, through the real lark-oapi request builders and token manager."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import cache

from apps.feishu.client import FeishuClient, FeishuError

# Until the root conftest has `pytest_plugins = ["tests.fakes.fixtures"]`, import the fixtures here
# (pytest finds fixtures by name; the test parameters shadow these imports on purpose).

pytestmark = pytest.mark.django_db

TEXT = {"text": "hello"}
REPLY_PATH = r"/im/v1/messages/om_[^/]+/reply$"
REPO_ROOT = Path(__file__).resolve().parents[3]
STREAM_CARD = {
    "schema": "2.0",
    "config": {"streaming_mode": True, "update_multi": True},
    "body": {"elements": [{"tag": "markdown", "element_id": "answer", "content": ""}]},
}


@pytest.fixture(autouse=True)
def _fast_backoff(settings):
    settings.FEISHU_RETRY_BASE_DELAY = 0.01


@pytest.fixture
def client(feishu_bot) -> FeishuClient:
    return FeishuClient.for_bot(feishu_bot)


def reply(client: FeishuClient, uuid: str = "reply-uuid-1", content: dict = TEXT) -> str:
    return client.reply_message(message_id="om_inbound_1", msg_type="text", content=content, uuid=uuid)


def test_it_retries_429_after_the_announced_reset_and_replies_once(client, fake_feishu):
    fake_feishu.inject_rate_limit(times=2, reset=1, path=REPLY_PATH)

    message_id = reply(client)

    attempts = fake_feishu.requests_to(REPLY_PATH)
    assert [r.status for r in attempts] == [429, 429, 200]
    assert [m["message_id"] for m in fake_feishu.messages] == [message_id]
    # x-ogw-ratelimit-reset: 1 -> each retry waited at least a second
    assert attempts[1].time - attempts[0].time >= 1.0
    assert attempts[2].time - attempts[1].time >= 1.0
    assert {r.json["uuid"] for r in attempts} == {"reply-uuid-1"}


def test_it_refreshes_a_rejected_token_once_and_replies_once(client, fake_feishu):
    reply(client, uuid="warm-up")
    old_token = fake_feishu.requests_to(REPLY_PATH)[-1].token
    fake_feishu.invalidate_tokens()

    reply(client, uuid="after-invalidation")

    attempts = fake_feishu.requests_to(REPLY_PATH)[1:]
    assert [(r.status, r.code) for r in attempts] == [(400, 99991663), (200, 0)]
    assert attempts[0].token == old_token
    assert attempts[1].token != old_token
    assert len(fake_feishu.token_requests) == 2
    assert [m["uuid"] for m in fake_feishu.messages] == ["warm-up", "after-invalidation"]
    # the shared cache now holds the new token, not the rejected one
    assert cache.get(f"feishu:lark:self_tenant_token:{client.app_id}") == attempts[1].token


def test_it_refreshes_the_token_only_once_per_call(client, fake_feishu):
    fake_feishu.inject_error(99991663, path=REPLY_PATH)

    with pytest.raises(FeishuError) as failure:
        reply(client)

    assert failure.value.code == 99991663 and not failure.value.retryable
    assert len(fake_feishu.requests_to(REPLY_PATH)) == 2
    assert fake_feishu.messages == []


def test_it_never_retries_bad_content(client, fake_feishu):
    with pytest.raises(FeishuError) as failure:
        reply(client, content={"no_text": True})

    error = failure.value
    assert (error.code, error.http_status, error.retryable) == (230001, 400, False)
    sent = fake_feishu.requests_to(REPLY_PATH)
    assert len(sent) == 1
    assert error.log_id == sent[0].log_id
    assert fake_feishu.messages == []


@pytest.mark.parametrize("code", [99991672, 99991676, 99991679])
def test_it_never_retries_scope_errors(client, fake_feishu, code):
    fake_feishu.inject_error(code, path=REPLY_PATH, status=400)

    with pytest.raises(FeishuError) as failure:
        reply(client)

    assert failure.value.code == code and not failure.value.retryable
    assert len(fake_feishu.requests_to(REPLY_PATH)) == 1


def test_it_retries_server_errors_with_backoff(client, fake_feishu):
    fake_feishu.inject_server_error(times=2, status=503, path=REPLY_PATH)

    message_id = reply(client)

    assert [r.status for r in fake_feishu.requests_to(REPLY_PATH)] == [503, 503, 200]
    assert [m["message_id"] for m in fake_feishu.messages] == [message_id]


def test_it_gives_up_after_the_configured_retries(client, fake_feishu, settings):
    settings.FEISHU_MAX_RETRIES = 2
    fake_feishu.inject_server_error(times=10, status=502, path=REPLY_PATH)

    with pytest.raises(FeishuError) as failure:
        reply(client)

    assert (failure.value.http_status, failure.value.retryable, failure.value.attempts) == (502, True, 3)
    assert len(fake_feishu.requests_to(REPLY_PATH)) == 3
    assert str(failure.value).endswith(", 3 attempts)")


def test_a_timed_out_send_is_retried_and_feishu_keeps_one_message(client, fake_feishu, settings):
    settings.FEISHU_HTTP_TIMEOUT = 1
    fake_feishu.inject_slow_answer(1.5, times=1, path=REPLY_PATH)

    message_id = reply(client)
    fake_feishu.wait_idle()

    # the first attempt landed but its answer came too late; the retry's same uuid was deduplicated
    attempts = fake_feishu.requests_to(REPLY_PATH)
    assert len(attempts) == 2
    assert [r.deduplicated for r in attempts] == [False, True]
    assert [m["message_id"] for m in fake_feishu.messages] == [message_id]


def test_an_unreachable_feishu_is_retried_then_reported(feishu_bot, settings):
    settings.FEISHU_MAX_RETRIES = 1
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = FeishuClient(app_id=feishu_bot.app_id, app_secret="x", base_url=f"http://127.0.0.1:{port}")

    with pytest.raises(FeishuError) as failure:
        reply(client)

    assert (failure.value.code, failure.value.http_status, failure.value.retryable) == (-1, 0, True)
    assert "connection failed" in failure.value.msg


def test_the_same_uuid_sent_twice_is_one_message(client, fake_feishu):
    first = client.send_message(
        receive_id="oc_group_1", receive_id_type="chat_id", msg_type="text", content=TEXT, uuid="u-1"
    )
    second = client.send_message(
        receive_id="oc_group_1", receive_id_type="chat_id", msg_type="text", content=TEXT, uuid="u-1"
    )

    assert first == second
    assert len(fake_feishu.messages) == 1
    assert len(fake_feishu.requests_to(r"/im/v1/messages$", "POST")) == 2


def test_the_tenant_token_is_shared_by_clients_through_the_cache(feishu_bot, fake_feishu):
    one = FeishuClient.for_bot(feishu_bot)
    # a second client built from scratch, as another process would
    other = FeishuClient(app_id=feishu_bot.app_id, app_secret=feishu_bot.app_secret, base_url=feishu_bot.base_url)
    assert one is not other

    reply(one, uuid="a")
    reply(other, uuid="b")

    assert len(fake_feishu.token_requests) == 1
    tokens = {r.token for r in fake_feishu.requests_to(REPLY_PATH)}
    assert len(tokens) == 1
    assert cache.get(f"feishu:lark:self_tenant_token:{feishu_bot.app_id}") in tokens


def test_the_tenant_token_is_shared_with_another_process(feishu_bot, fake_feishu):
    reply(FeishuClient.for_bot(feishu_bot), uuid="from-this-process")
    code = (
        "import django; django.setup()\n"
        "from apps.feishu.client import FeishuClient\n"
        f"client = FeishuClient(app_id={feishu_bot.app_id!r}, app_secret={feishu_bot.app_secret!r},"
        f" base_url={feishu_bot.base_url!r})\n"
        "client.reply_message(message_id='om_inbound_1', msg_type='text', content={'text': 'hi'},"
        " uuid='from-another-process')\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}

    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, check=True, timeout=60)

    assert [m["uuid"] for m in fake_feishu.messages] == ["from-this-process", "from-another-process"]
    assert len(fake_feishu.token_requests) == 1
    assert len({r.token for r in fake_feishu.requests_to(REPLY_PATH)}) == 1


def test_a_shared_cache_outage_costs_token_fetches_not_replies(feishu_bot, fake_feishu, monkeypatch):
    class DownCache:
        def get(self, *args, **kwargs):
            raise ConnectionError("redis is away")

        set = delete = get

    monkeypatch.setattr("apps.feishu.client.transport.cache", DownCache())
    client = FeishuClient.for_bot(feishu_bot)

    reply(client, uuid="during-outage")

    assert [m["uuid"] for m in fake_feishu.messages] == ["during-outage"]
    assert len(fake_feishu.token_requests) == 1


def test_a_wrong_app_secret_is_a_permanent_error(feishu_bot, fake_feishu):
    fake_feishu.add_app(feishu_bot.app_id, "the-real-secret")
    client = FeishuClient(app_id=feishu_bot.app_id, app_secret="a-wrong-secret", base_url=fake_feishu.base_url)

    with pytest.raises(FeishuError) as failure:
        reply(client)

    assert failure.value.code == 10014 and not failure.value.retryable
    assert len(fake_feishu.token_requests) == 1
    assert fake_feishu.requests_to(REPLY_PATH) == []


def test_a_card_streams_with_increasing_sequence_and_closes(client, fake_feishu):
    card_id = client.card_create(card=STREAM_CARD)
    message_id = client.reply_message(
        message_id="om_inbound_1", msg_type="interactive", content={"type": "card", "data": {"card_id": card_id}},
        uuid="card-reply",
    )  # fmt: skip
    for sequence, text in enumerate(["Hel", "Hello, wor", "Hello, world."], start=1):
        client.card_element_content(card_id=card_id, element_id="answer", content=text, sequence=sequence)
    client.card_settings(card_id=card_id, settings={"config": {"streaming_mode": False}}, sequence=4)

    card = fake_feishu.card(card_id)
    assert card["elements"]["answer"]["content"] == "Hello, world."
    assert card["streaming_mode"] is False
    assert [op["sequence"] for op in card["operations"]] == [1, 2, 3, 4]
    assert fake_feishu.message(message_id)["card_id"] == card_id
    # card data went over the wire as a JSON string, as CardKit wants
    create = fake_feishu.requests_to(r"/cardkit/v1/cards$")[0].json
    assert create["type"] == "card_json" and isinstance(create["data"], str)


def test_a_card_sequence_that_does_not_grow_is_surfaced(client, fake_feishu):
    card_id = client.card_create(card=STREAM_CARD)
    client.card_element_content(card_id=card_id, element_id="answer", content="first", sequence=5)

    with pytest.raises(FeishuError) as failure:
        client.card_element_content(card_id=card_id, element_id="answer", content="stale", sequence=5)

    assert failure.value.code == 300317 and not failure.value.retryable
    assert fake_feishu.card(card_id)["elements"]["answer"]["content"] == "first"
    assert len(fake_feishu.requests_to(r"/elements/answer/content$")) == 2


def test_a_card_update_whose_answer_was_lost_is_not_reported_as_a_conflict(client, fake_feishu, settings):
    settings.FEISHU_HTTP_TIMEOUT = 1
    card_id = client.card_create(card=STREAM_CARD)
    fake_feishu.inject_slow_answer(1.5, times=1, path=r"/elements/answer/content$")

    client.card_element_content(card_id=card_id, element_id="answer", content="landed", sequence=1)
    fake_feishu.wait_idle()

    # the slow attempt was applied; its retry met 300317, which here means "already done"
    assert [r.code for r in fake_feishu.requests_to(r"/elements/answer/content$")] == [0, 300317]
    assert fake_feishu.card(card_id)["elements"]["answer"]["content"] == "landed"


def test_reactions_resources_and_uploads_reach_feishu(client, fake_feishu):
    reaction_id = client.reaction_add(message_id="om_inbound_1", emoji_type="OnIt")
    client.reaction_remove(message_id="om_inbound_1", reaction_id=reaction_id)
    fake_feishu.put_resource("om_inbound_1", "file_v3_in", b"%PDF-1.7 bytes", "report.pdf")
    downloaded = client.resource_download(message_id="om_inbound_1", file_key="file_v3_in", resource_type="file")
    image_key = client.image_upload(data=b"\x89PNG\r\n\x1a\nimage", name="chart.png")
    file_key = client.file_upload(data=b"a,b\n1,2\n", name="table.csv")

    assert fake_feishu.reactions[reaction_id]["emoji_type"] == "OnIt"
    assert fake_feishu.reactions[reaction_id]["deleted"] is True
    assert downloaded == b"%PDF-1.7 bytes"
    assert fake_feishu.requests_to(r"/resources/file_v3_in$")[0].query == {"type": "file"}
    image = fake_feishu.requests_to(r"/im/v1/images$")[0]
    assert image.form == {"image_type": "message"}
    assert (image.files["image"]["filename"], image.files["image"]["data"]) == ("chart.png", b"\x89PNG\r\n\x1a\nimage")
    assert fake_feishu.uploads[image_key]["data"] == b"\x89PNG\r\n\x1a\nimage"
    upload = fake_feishu.requests_to(r"/im/v1/files$")[0]
    assert upload.form == {"file_type": "stream", "file_name": "table.csv"}
    assert fake_feishu.uploads[file_key]["data"] == b"a,b\n1,2\n"


def test_an_unknown_emoji_is_rejected_without_retry(client, fake_feishu):
    with pytest.raises(FeishuError) as failure:
        client.reaction_add(message_id="om_inbound_1", emoji_type="onit")

    assert failure.value.code == 231001
    assert len(fake_feishu.requests_to(r"/reactions$")) == 1


def test_bot_info_and_data_apis(client, fake_feishu, feishu_bot):
    assert client.bot_info()["open_id"] == feishu_bot.bot_open_id
    found = client.bitable_record_search(
        app_token="bascnDemoBase0001", table_id="tblOrders0001",
        body={"filter": {"conjunction": "and", "conditions": [
            {"field_name": "Status", "operator": "is", "value": ["Open"]},
            {"field_name": "Amount", "operator": "isGreater", "value": ["1000"]},
        ]}},
    )  # fmt: skip
    assert [item["record_id"] for item in found["items"]] == ["recOrder003"]
    docs = client.doc_wiki_search(query="expense")
    assert [unit["result_meta"]["token"] for unit in docs["res_units"]] == ["doxcnOnboarding0001", "doxcnExpense0003"]
    assert "manager approval" in client.docx_raw_content(document_id="doxcnExpense0003")


def test_every_outcome_is_logged_with_the_feishu_log_id(client, fake_feishu, caplog):
    fake_feishu.inject_rate_limit(times=1, reset=0, path=REPLY_PATH)
    with caplog.at_level(logging.INFO, logger="apps.feishu.client"):
        reply(client)
        with pytest.raises(FeishuError):
            reply(client, uuid="bad", content={})

    events = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "feishu.call"]
    outcomes = [(e["op"], e["outcome"], e["log_id"]) for e in events]
    log_ids = [r.log_id for r in fake_feishu.requests_to(REPLY_PATH)]
    assert outcomes == [
        ("im.message.reply", "retry", log_ids[0]),
        ("im.message.reply", "ok", log_ids[1]),
        ("im.message.reply", "failed", log_ids[2]),
    ]
    assert all(log_id for log_id in log_ids)


def test_connections_are_reused(client, fake_feishu):
    for n in range(5):
        reply(client, uuid=f"pooled-{n}")

    peers = {r.peer for r in fake_feishu.requests_to(REPLY_PATH)}
    assert len(fake_feishu.messages) == 5
    assert len(peers) == 1, peers  # one pooled keep-alive connection, not one per call


def test_a_full_card_update_shows_the_final_text_and_ends_streaming_in_one_call(client, fake_feishu):
    card_id = client.card_create(card=STREAM_CARD)
    client.card_element_content(card_id=card_id, element_id="answer", content="Hel", sequence=1)
    element = {"tag": "markdown", "element_id": "answer", "content": "Hello, world."}
    final = {**STREAM_CARD, "config": {"streaming_mode": False, "update_multi": True}, "body": {"elements": [element]}}

    client.card_update(card_id=card_id, card=final, sequence=2)

    card = fake_feishu.card(card_id)
    assert card["elements"]["answer"]["content"] == "Hello, world."
    assert card["streaming_mode"] is False
    assert [(op["op"], op["sequence"]) for op in card["operations"]] == [("content", 1), ("update", 2)]
    (put,) = fake_feishu.requests_to(rf"/cardkit/v1/cards/{card_id}$", "PUT")
    assert put.json["card"]["type"] == "card_json" and isinstance(put.json["card"]["data"], str)
    # streaming is over: element updates are refused, like Feishu does
    with pytest.raises(FeishuError) as failure:
        client.card_element_content(card_id=card_id, element_id="answer", content="late", sequence=3)
    assert failure.value.code == 300309


def test_a_full_card_update_is_checked_like_other_card_operations(client, fake_feishu):
    card_id = client.card_create(card=STREAM_CARD)
    client.card_update(card_id=card_id, card=STREAM_CARD, sequence=3, uuid="upd-1")
    client.card_update(card_id=card_id, card=STREAM_CARD, sequence=3, uuid="upd-1")  # a repeat: applied once

    with pytest.raises(FeishuError) as stale:
        client.card_update(card_id=card_id, card=STREAM_CARD, sequence=3)
    exclusive = {**STREAM_CARD, "config": {"update_multi": False}}
    with pytest.raises(FeishuError) as not_shared:
        client.card_update(card_id=card_id, card=exclusive, sequence=4)
    with pytest.raises(FeishuError) as not_a_card:
        client.card_update(card_id=card_id, card={"schema": "1.0"}, sequence=5)

    assert stale.value.code == 300317
    assert not_shared.value.code == not_a_card.value.code == 300301
    assert [op["sequence"] for op in fake_feishu.card(card_id)["operations"]] == [3]
