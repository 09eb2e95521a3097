"""Per-call cost of the Feishu client layer, against the fake Feishu server in another process.

    DATABASE_URL=... REDIS_URL=redis://127.0.0.1:6379/4 \\
        .venv/bin/python -m tests.fakes.feishu_bench [--calls 500] [--answers 300]

Compares, for the same text reply: lark-oapi's own call path (`client.im.v1.message.reply`, a new
connection per call through lark's Transport) and FeishuClient (pooled keep-alive connection, shared
token cache, Redis rate limiter, retries, log line). CPU is this process's CPU time
(`time.process_time`), so the fake server's work is not counted. `--answers N` also runs N whole
answers through the Feishu responder (what phase 1 of bench.concurrency makes per conversation,
outbound rows in the database included) and prints the fake server's CPU per answer (/proc) and the
Feishu calls per answer it saw. Logs as in bench.concurrency's worker (JSON, WARNING).
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


def _measure(label: str, calls: int, fn, *, per: str = "call", warm: bool = True) -> None:
    if warm:
        fn(-1)  # warm-up (token fetch, connection)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for n in range(calls):
        fn(n)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"{label:<44} cpu {cpu / calls * 1000:6.2f} ms/{per}   wall {wall / calls * 1000:6.2f} ms/{per}")


def _measure_answers(answers: int, base_url: str, *, server_pid: int) -> None:
    """Whole answers as phase 1 of bench.concurrency produces them: reaction, first text, final, close.

    Runs the real FeishuResponder (outbound rows in the database included) against the fake; the
    throttle sleeps are set to zero (they cost wall time, not CPU). Prints this process's CPU per
    answer, the fake's CPU per answer (from /proc) and the Feishu calls per answer the fake saw.
    """
    from apps.runtime.responders import feishu as responder_module
    from apps.runtime.responders.base import ResponderContext
    from apps.transcripts.models import Message, Origin
    from tests.factories import BotFactory, ConversationFactory, TenantFactory

    responder_module.THROTTLE_SECONDS = 0.0
    if hasattr(responder_module, "CARD_OP_GAP_SECONDS"):
        responder_module.CARD_OP_GAP_SECONDS = 0.0
    tenant = TenantFactory(slug=f"bench-{os.getpid()}")
    bot = BotFactory(tenant=tenant, base_url=base_url, app_id=f"cli_answers_{os.getpid()}")
    conversation = ConversationFactory(
        tenant=tenant, origin=Origin.FEISHU, bot=bot, chat_id="oc_bench", chat_type="p2p",
        key=f"feishu:{bot.app_id}:oc_bench",
    )  # fmt: skip
    text = "Benchmark answer: the platform streamed this text into a Feishu card. " * 2

    def answer(n: int) -> None:
        user = Message(conversation=conversation, tenant=tenant, role="user", content="hi",
                       external_id=f"om_answer_{os.getpid()}_{n}")  # fmt: skip
        ctx = ResponderContext(conversation=conversation, turn=None, user_messages=[user], assistant_message_id=n + 10)
        responder = responder_module.FeishuResponder(ctx)
        responder.on_start()
        responder.on_text_delta(text[:4])
        responder.on_final(text)
        responder.close()

    def fake_cpu() -> float:
        with open(f"/proc/{server_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    answer(-1)
    fake0 = fake_cpu()
    calls0, peers0 = _fake_request_count(base_url), _fake_stats(base_url)["peers"]
    _measure("whole answers (FeishuResponder, DB rows incl.)", answers, answer, per="answer", warm=False)
    fake = fake_cpu() - fake0
    calls = _fake_request_count(base_url) - calls0
    peers = _fake_stats(base_url)["peers"] - peers0
    per_answer = (
        f"fake server cpu {fake / answers * 1000:6.2f} ms/answer   Feishu calls/answer {calls / answers:.2f}"
        f"   new connections {peers}"
    )
    print(f"{'':<44} {per_answer}")


def _fake_stats(base_url: str) -> dict:
    import requests as http

    return http.get(base_url + "/_fake/stats", timeout=5).json()


def _fake_request_count(base_url: str) -> int:
    return _fake_stats(base_url)["requests"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--tls", action="store_true", help="serve the fake over https (self-signed), like Feishu")
    parser.add_argument(
        "--answers", type=int, default=0, help="also measure N whole answers through the Feishu responder (needs a DB)"
    )
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
    # like bench.concurrency's worker: JSON logs at WARNING (LOG_LEVEL=info shows what logging costs)
    os.environ.setdefault("LOG_FORMAT", "json")
    os.environ.setdefault("LOG_LEVEL", "warning")
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
        if args.answers:
            _measure_answers(args.answers, base_url, server_pid=server.pid)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
