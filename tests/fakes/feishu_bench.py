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
import tempfile
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
    parser.add_argument("--tls", action="store_true", help="serve the fake over https (self-signed), like Feishu")
    args = parser.parse_args()
    tls_dir = tempfile.mkdtemp(prefix="fake-feishu-tls-") if args.tls else ""
    if tls_dir:
        # both lark's per-call requests and our session (at creation) trust the throwaway certificate
        # (the usual public CA bundle plus the throwaway certificate, so loading it costs what it costs in production)
        import certifi

        bundle = os.path.join(tls_dir, "bundle.pem")
        with open(certifi.where()) as public, open(bundle, "w") as out:
            out.write(public.read())
        os.environ["REQUESTS_CA_BUNDLE"] = bundle
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
    command = [sys.executable, "-m", "tests.fakes.feishu", "--port", str(port)] + (
        ["--tls", tls_dir] if tls_dir else []
    )
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().rsplit(" ", 1)[-1].strip()  # "fake Feishu listening on URL"
        if tls_dir:
            with open(os.path.join(tls_dir, "cert.pem")) as cert, open(os.environ["REQUESTS_CA_BUNDLE"], "a") as out:
                out.write(cert.read())
        client = FeishuClient(app_id=f"cli_bench_{os.getpid()}", app_secret="bench-secret", base_url=base_url)
        content = '{"text":"hello from the benchmark"}'

        def lark_native(n: int) -> None:
            body = ReplyMessageRequestBody.builder().content(content).msg_type("text").uuid(f"lark-{n}").build()
            req = ReplyMessageRequest.builder().message_id("om_bench").request_body(body).build()
            resp = client.lark.im.v1.message.reply(req)
            assert resp.success(), resp.msg

        def ours(n: int) -> None:
            client.reply_message(message_id="om_bench", msg_type="text", content=content, uuid=f"ours-{n}")

        print(f"{args.calls} text replies each, fake Feishu ({base_url}) in a separate process")
        _measure("lark-oapi native (new connection per call)", args.calls, lark_native)
        _measure("FeishuClient (pooled + cache + limiter + log)", args.calls, ours)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
