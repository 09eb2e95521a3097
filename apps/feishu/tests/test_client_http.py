"""The small HTTP/1.1 client under FeishuClient: answers it must read, connections it must not reuse, TLS."""

from __future__ import annotations

import socket

import pytest

from apps.feishu.client import FeishuClient
from apps.feishu.client.http import HttpPool, NotSent
from tests.fakes.feishu import FakeFeishu, self_signed_certificate
from tests.fakes.scripted_http import ScriptedServer


def _get(pool: HttpPool, target: str = "/open-apis/x"):
    return pool.request("GET", target, headers={"Authorization": "Bearer t"}, body=None, timeout=(2, 2))


def test_it_reads_chunked_and_length_answers_on_one_kept_connection():
    server = ScriptedServer(
        [
            (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n", False),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Tt-Logid: L2\r\n\r\n{}", False),
        ]
    )  # fmt: skip
    pool = HttpPool(f"http://127.0.0.1:{server.port}")

    first, second = _get(pool), _get(pool)

    assert (first.status, first.content, first.headers["content-type"]) == (200, b'{"a": 1}', "application/json")
    assert second.headers.get("X-Tt-Logid") == "L2"
    assert [n for n, _ in server.requests] == [1, 1]  # the same connection
    assert server.requests[0][1].startswith(b"GET /open-apis/x HTTP/1.1\r\nHost: 127.0.0.1:")
    server.close()


def test_a_connection_the_server_closed_or_asked_to_close_is_not_reused():
    server = ScriptedServer(
        [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", True),  # closes without saying so
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nb", False),
            (b"HTTP/1.1 200 OK\r\n\r\nuntil close", True),  # no length: read to the end
            (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        ]
    )
    pool = HttpPool(f"http://127.0.0.1:{server.port}")

    answers = [_get(pool) for _ in range(4)]

    assert [a.content for a in answers] == [b"a", b"b", b"until close", b""]
    assert [n for n, _ in server.requests] == [1, 2, 3, 4]
    server.close()


def test_a_post_carries_its_body_and_length():
    server = ScriptedServer([(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False)])
    pool = HttpPool(f"http://127.0.0.1:{server.port}/prefix")

    pool.request("POST", "/open-apis/y?a=1", headers={"Content-Type": "application/json"}, body=b'{"k":"v"}',
                 timeout=(2, 2))  # fmt: skip

    ((_, sent),) = server.requests
    assert sent.startswith(b"POST /prefix/open-apis/y?a=1 HTTP/1.1\r\n")
    assert b"Content-Length: 9\r\n" in sent and sent.endswith(b'\r\n\r\n{"k":"v"}')
    server.close()


def test_no_answer_in_time_is_a_timeout_and_a_refused_connection_was_never_sent():
    server = ScriptedServer([])  # accepts, never answers
    pool = HttpPool(f"http://127.0.0.1:{server.port}")
    with pytest.raises(TimeoutError):
        pool.request("GET", "/slow", headers={}, body=None, timeout=(1, 0.3))
    server.close()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NotSent):
        _get(HttpPool(f"http://127.0.0.1:{port}"))


def test_it_speaks_tls_with_the_configured_ca_bundle(tmp_path, monkeypatch, db):
    import ssl

    cert, key = self_signed_certificate(str(tmp_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    fake = FakeFeishu(ssl_context=context).start()
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)  # lark's token fetch and our pool both trust it
        client = FeishuClient(app_id="cli_tls_test", app_secret="tls-secret", base_url=fake.base_url)

        client.reply_message(message_id="om_tls", msg_type="text", content={"text": "hi"}, uuid="tls-1")
        client.reply_message(message_id="om_tls", msg_type="text", content={"text": "hi"}, uuid="tls-2")

        assert fake.base_url.startswith("https://")
        assert [m["uuid"] for m in fake.messages] == ["tls-1", "tls-2"]
        assert len({r.peer for r in fake.requests_to(r"/reply$")}) == 1
    finally:
        fake.stop()


def test_an_environment_proxy_is_used(monkeypatch):
    proxy = ScriptedServer([(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Tt-Logid: via-proxy\r\n\r\n{}", False)])
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    pool = HttpPool("http://open.feishu.invalid")

    answer = _get(pool, "/open-apis/bot/v3/info")

    assert (answer.status, answer.headers.get("x-tt-logid")) == (200, "via-proxy")
    (_, sent), = proxy.requests  # fmt: skip
    assert sent.startswith(b"GET http://open.feishu.invalid/open-apis/bot/v3/info HTTP/1.1\r\n")
    proxy.close()
