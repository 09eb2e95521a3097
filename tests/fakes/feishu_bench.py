"""Per-call cost of the Feishu client layer, against the fake Feishu server in another process.

    DATABASE_URL=... REDIS_URL=redis://127.0.0.1:6379/4 \\
        .venv/bin/python -m tests.fakes.feishu_bench [--calls 500]

Compares, for the same text reply: lark-oapi's own call path (`client.im.v1.message.reply`, a new
connection per call through lark's Transport) and FeishuClient (lark-built request, pooled session,
shared token cache, Redis rate limiter, retries, structlog line). CPU is this process's CPU time
(`time.process_time`), so the fake server's work is not counted.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(label: str, calls: int, fn) -> None:
    fn(-1)  # warm-up (token fetch, connection)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for n in range(calls):
        fn(n)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"{label:<44} cpu {cpu / calls * 1000:6.2f} ms/call   wall {wall / calls * 1000:6.2f} ms/call")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.conf import settings

    settings.FEISHU_RATE_PER_SECOND = 100_000  # measure the client, not the limiter's queueing
    logging.getLogger("apps.feishu.client").handlers = [logging.NullHandler()]
    logging.getLogger("apps.feishu.client").propagate = False

    from lark_oapi.api.im.v1 import ReplyMessageRequest, ReplyMessageRequestBody

    from apps.feishu.client import FeishuClient

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.fakes.feishu", "--port", str(port)], stdout=subprocess.PIPE)
    try:
        server.stdout.readline()  # "fake Feishu listening on ..."
        base_url = f"http://127.0.0.1:{port}"
        client = FeishuClient(app_id="cli_bench", app_secret="bench-secret", base_url=base_url)
        content = '{"text":"hello from the benchmark"}'

        def lark_native(n: int) -> None:
            body = ReplyMessageRequestBody.builder().content(content).msg_type("text").uuid(f"lark-{n}").build()
            req = ReplyMessageRequest.builder().message_id("om_bench").request_body(body).build()
            resp = client.lark.im.v1.message.reply(req)
            assert resp.success(), resp.msg

        def ours(n: int) -> None:
            client.reply_message(message_id="om_bench", msg_type="text", content=content, uuid=f"ours-{n}")

        print(f"{args.calls} text replies each, fake Feishu in a separate process")
        _measure("lark-oapi native (new connection per call)", args.calls, lark_native)
        _measure("FeishuClient (pooled + cache + limiter + log)", args.calls, ours)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
