"""The fake Feishu server checks requests the way Feishu does (raw HTTP, no client layer in between)."""

from __future__ import annotations

import json

import pytest
import requests

# Until the root conftest has `pytest_plugins = ["tests.fakes.fixtures"]`, import the fixtures here.


@pytest.fixture
def token(fake_feishu) -> str:
    fake_feishu.add_app("cli_raw", "raw-secret")
    answer = requests.post(
        fake_feishu.base_url + "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": "cli_raw", "app_secret": "raw-secret"},
        timeout=5,
    ).json()
    assert answer["code"] == 0 and answer["expire"] == 7200
    return answer["tenant_access_token"]


def send(fake_feishu, token: str | None, body: dict, receive_id_type: str = "chat_id") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(
        fake_feishu.base_url + "/open-apis/im/v1/messages",
        params={"receive_id_type": receive_id_type},
        json=body,
        headers=headers,
        timeout=5,
    )
    assert response.headers["X-Tt-Logid"]
    return response.status_code, response.json()


TEXT = {"receive_id": "oc_1", "msg_type": "text", "content": json.dumps({"text": "hi"})}


def test_the_token_endpoint_checks_the_secret(fake_feishu, token):
    answer = requests.post(
        fake_feishu.base_url + "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": "cli_raw", "app_secret": "wrong"},
        timeout=5,
    ).json()
    assert answer["code"] == 10014
    # while it has more than 30 minutes left, the same token is handed out again
    again = requests.post(
        fake_feishu.base_url + "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": "cli_raw", "app_secret": "raw-secret"},
        timeout=5,
    ).json()
    assert again["tenant_access_token"] == token


def test_calls_need_a_valid_token(fake_feishu, token):
    assert send(fake_feishu, None, TEXT)[1]["code"] == 99991661
    assert send(fake_feishu, "t-forged", TEXT)[1]["code"] == 99991663
    fake_feishu.invalidate_tokens()
    assert send(fake_feishu, token, TEXT)[1]["code"] == 99991663
    assert fake_feishu.messages == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**TEXT, "content": {"text": "not a string"}}, 230001),
        ({**TEXT, "content": "not json"}, 230001),
        ({**TEXT, "content": json.dumps({"txt": "wrong key"})}, 230001),
        ({**TEXT, "msg_type": "markdown"}, 99992402),
        ({**TEXT, "uuid": "u" * 51}, 99992402),
        ({**TEXT, "msg_type": "interactive", "content": json.dumps({"type": "card", "data": {"card_id": "nope"}})},
         230001),
        ({**TEXT, "msg_type": "post", "content": json.dumps({"zh_cn": {"title": "t", "content": "flat"}})}, 230001),
    ],
)  # fmt: skip
def test_bad_messages_are_refused_and_not_sent(fake_feishu, token, body, code):
    status, answer = send(fake_feishu, token, body)

    assert (status, answer["code"]) == (400, code)
    assert fake_feishu.messages == []


def test_an_unknown_receive_id_type_is_refused(fake_feishu, token):
    assert send(fake_feishu, token, TEXT, receive_id_type="phone")[1]["code"] == 99992402


def test_a_uuid_deduplicates_within_the_window(fake_feishu, token):
    first = send(fake_feishu, token, {**TEXT, "uuid": "same"})[1]["data"]["message_id"]
    second = send(fake_feishu, token, {**TEXT, "uuid": "same"})[1]["data"]["message_id"]
    third = send(fake_feishu, token, {**TEXT, "uuid": "other"})[1]["data"]["message_id"]

    assert first == second != third
    assert [m["uuid"] for m in fake_feishu.messages] == ["same", "other"]


def test_injected_faults_are_counted_down(fake_feishu, token):
    fake_feishu.inject_rate_limit(times=1, reset=3)
    fake_feishu.inject_server_error(times=1, status=502)

    rate_limited = requests.post(
        fake_feishu.base_url + "/open-apis/im/v1/messages?receive_id_type=chat_id",
        json=TEXT, headers={"Authorization": f"Bearer {token}"}, timeout=5,
    )  # fmt: skip
    gateway = requests.post(
        fake_feishu.base_url + "/open-apis/im/v1/messages?receive_id_type=chat_id",
        json=TEXT, headers={"Authorization": f"Bearer {token}"}, timeout=5,
    )  # fmt: skip
    ok = send(fake_feishu, token, TEXT)

    assert (rate_limited.status_code, rate_limited.json()["code"]) == (429, 99991400)
    assert rate_limited.headers["x-ogw-ratelimit-reset"] == "3"
    assert gateway.status_code == 502 and gateway.headers["Content-Type"].startswith("text/html")
    assert ok[1]["code"] == 0
    assert [r.fault for r in fake_feishu.requests_to(r"/im/v1/messages$")] == ["rate_limit", "http_502", ""]


def test_the_token_endpoint_is_spared_by_catch_all_faults(fake_feishu):
    fake_feishu.inject_server_error(times=5)
    fake_feishu.add_app("cli_raw", "raw-secret")

    answer = requests.post(
        fake_feishu.base_url + "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": "cli_raw", "app_secret": "raw-secret"},
        timeout=5,
    )

    assert answer.status_code == 200


def test_reset_forgets_everything(fake_feishu, token):
    send(fake_feishu, token, TEXT)
    fake_feishu.inject_error(230001)

    fake_feishu.reset()

    assert (fake_feishu.requests, fake_feishu.messages, fake_feishu.tokens) == ([], [], {})
    assert send(fake_feishu, token, TEXT)[1]["code"] == 99991663


def test_a_chunked_request_body_and_a_kept_connection_are_understood(fake_feishu, token):
    def chunks():
        yield b'{"receive_id": "oc_1", "msg_type": "text", '
        yield json.dumps({"content": json.dumps({"text": "chunked"})})[1:].encode()

    with requests.Session() as session:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        url = fake_feishu.base_url + "/open-apis/im/v1/messages?receive_id_type=chat_id"
        first = session.post(url, data=chunks(), headers=headers, timeout=5)
        second = session.post(url, json=TEXT, headers=headers, timeout=5)

    assert (first.json()["code"], second.json()["code"]) == (0, 0)
    assert [m["content"] for m in fake_feishu.messages] == [{"text": "chunked"}, {"text": "hi"}]
    assert len({r.peer for r in fake_feishu.requests_to(r"/im/v1/messages$")}) == 1


def test_a_malformed_request_gets_400_and_no_side_effect(fake_feishu):
    import socket

    with socket.create_connection((fake_feishu.host, fake_feishu.port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        answer = sock.recv(4096)

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert fake_feishu.requests == []
