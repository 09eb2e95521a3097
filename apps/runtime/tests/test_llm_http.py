"""The HTTP transport under the LLM clients: what it must read, which connections it reuses, which
errors the SDK sees. (Streaming, timeouts and cancellation through it are covered by the turn tests,
which run the real openai client against the fake LLM.)"""

from __future__ import annotations

import socket

import httpx2
import openai
import pytest

from apps.runtime import llm
from apps.runtime.llm import llm_client
from apps.runtime.llm_http import LeanTransport, transport_for
from tests.fakes.scripted_http import ScriptedServer

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"a\r\ndata: ab\n\n\r\na\r\ndata: cd\n\n\r\n0\r\n\r\n"
)


def _client(server: ScriptedServer) -> httpx2.Client:
    return httpx2.Client(base_url=f"http://127.0.0.1:{server.port}", transport=LeanTransport(tls=llm._tls_context()))


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_the_llm_clients_use_it_unless_a_proxy_is_set(monkeypatch, no_proxy):
    monkeypatch.setattr(llm, "_clients", {})
    client = llm_client(base_url="http://127.0.0.1:9/v1", api_key="k")
    assert isinstance(client._client._transport, LeanTransport)

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:3128")
    assert transport_for("http://llm.example/v1", llm._tls_context()) is None
    client.close()


def test_it_streams_chunked_and_reads_length_answers_on_one_kept_connection():
    server = ScriptedServer([(CHUNKED, False), (b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}", False)])
    http = _client(server)

    with http.stream("POST", "/v1/chat/completions", json={"model": "m"}, headers={"X-Trace-Id": "t1"}) as answer:
        parts = list(answer.iter_raw())
    second = http.get("/v1/models")

    assert parts == [b"data: ab\n\n", b"data: cd\n\n"]  # chunk by chunk, as they arrive
    assert (answer.status_code, answer.headers["content-type"], answer.http_version) == (
        200,
        "text/event-stream",
        "HTTP/1.1",
    )
    assert (second.status_code, second.content, second.reason_phrase) == (404, b"{}", "Not Found")
    assert [n for n, _ in server.requests] == [1, 1]  # the same connection
    sent = server.requests[0][1]
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nX-Trace-Id: t1\r\n" in sent and b"\r\nContent-Length: 13\r\n" in sent
    assert sent.endswith(b'\r\n\r\n{"model":"m"}')
    server.close()


def test_a_connection_closed_or_left_half_read_is_not_reused():
    server = ScriptedServer(
        [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na", True),
            (CHUNKED, False),  # left half read below
            (b"HTTP/1.1 200 OK\r\n\r\nuntil close", True),
            (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        ]
    )
    http = _client(server)

    first = http.get("/a")
    with http.stream("GET", "/b") as half:
        next(half.iter_raw())
    third, fourth = http.get("/c"), http.get("/d")

    assert [first.content, third.content, fourth.content] == [b"a", b"until close", b""]
    assert [n for n, _ in server.requests] == [1, 2, 3, 4]
    server.close()


def test_a_kept_connection_the_server_closed_is_retried_once_on_a_new_one():
    server = ScriptedServer(
        [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", True),  # closes without saying so
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", False),
        ]
    )
    http = _client(server)

    assert http.get("/a").content == b"a"
    assert http.get("/b").content == b"b"
    assert [n for n, _ in server.requests] == [1, 2]
    server.close()


def test_the_sdk_sees_its_own_errors_for_refused_silent_and_cut_answers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0,
                            http_client=httpx2.Client(transport=LeanTransport(tls=llm._tls_context())))  # fmt: skip
    with pytest.raises(openai.APIConnectionError):
        refused.models.list()

    silent = ScriptedServer([])  # accepts, never answers
    http = _client(silent)
    with pytest.raises(httpx2.ReadTimeout):
        http.get("/slow", timeout=0.3)
    silent.close()

    cut = ScriptedServer([(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata:", True)])
    with pytest.raises(httpx2.RemoteProtocolError), _client(cut).stream("GET", "/cut") as answer:
        list(answer.iter_raw())
    cut.close()

    garbled = ScriptedServer([(b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", True)])
    with pytest.raises(httpx2.RemoteProtocolError):
        _client(garbled).get("/garbled")
    garbled.close()


def test_it_speaks_tls_and_checks_the_certificate(tmp_path, db):
    import ssl

    from tests.fakes.feishu import FakeFeishu, self_signed_certificate

    cert, key = self_signed_certificate(str(tmp_path))
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    fake = FakeFeishu(ssl_context=server_side).start()
    try:
        fake.add_app("cli_llm_tls", "s3cret")
        path = "/open-apis/auth/v3/tenant_access_token/internal"
        body = {"app_id": "cli_llm_tls", "app_secret": "s3cret"}
        trusting = ssl.create_default_context(cafile=cert)
        answer = httpx2.Client(transport=LeanTransport(tls=trusting)).post(fake.base_url + path, json=body)
        assert fake.base_url.startswith("https://") and answer.json()["code"] == 0

        with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx2.Client(transport=LeanTransport(tls=llm._tls_context())).post(fake.base_url + path, json=body)
    finally:
        fake.stop()
