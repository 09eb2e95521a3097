"""The LLM client's own pieces: the SSE decoder's fast path and the per-thread client shards."""

from __future__ import annotations

import threading

import pytest
from openai._streaming import SSEDecoder

from apps.runtime import llm
from apps.runtime.llm import EventBlockDecoder, llm_client

BODIES = [
    b'data: {"a":1}\n\ndata: {"b":"\xe4\xbd\xa0\xe5\xa5\xbd"}\n\ndata: [DONE]\n\n',
    b"data: x\n\n\ndata: y\n\n",
    b': ping\n\ndata: a\ndata: b\n\nevent: error\ndata: {"e":1}\n\nid: 5\ndata: q\n\nretry: 10\n\n',
    b"data: a\r\n\r\ndata: b\r\n\r\n",
    b"data: a\n\ndata: b\r\rdata: c\n\n",
    b"data:nospace\n\ndata: tail\n",
    b"data: end\n\ndata: partial\ndata",
    b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n",  # an event's id carries over to the next ones
]


def _events(decoder: SSEDecoder, parts: list[bytes]) -> list[tuple]:
    return [(e.event, e.data, e.id, e.retry) for e in decoder.iter_bytes(iter(parts))]


@pytest.mark.parametrize("body", BODIES)
def test_the_fast_decoder_yields_what_the_sdks_decoder_yields_however_the_body_is_cut(body):
    splits = [[body]] + [[body[:i], body[i:]] for i in range(1, len(body))]
    splits += [[body[i : i + 3] for i in range(0, len(body), 3)]]
    for parts in splits:
        assert _events(EventBlockDecoder(), parts) == _events(SSEDecoder(), parts), parts


def test_each_thread_keeps_one_client_and_threads_spread_over_the_shards(monkeypatch):
    monkeypatch.setattr(llm, "_clients", {})
    seen: list[tuple[int, int]] = []

    def use() -> None:
        first = llm_client(base_url="http://127.0.0.1:9/v1", api_key="k")
        again = llm_client(base_url="http://127.0.0.1:9/v1", api_key="k")
        seen.append((id(first), id(again)))

    threads = [threading.Thread(target=use) for _ in range(llm.CLIENT_SHARDS * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(first == again for first, again in seen)
    assert len({first for first, _ in seen}) == llm.CLIENT_SHARDS
    for client in llm._clients.values():
        assert isinstance(client._make_sse_decoder(), EventBlockDecoder)
        client.close()
