"""Worker CPU and database round trips per agent turn, measured in-process.

    .venv/bin/python -m bench.turn_cpu                          # 200 conversations, 30 threads
    .venv/bin/python -m bench.turn_cpu --threads 50 --origin null   # without the Feishu responder
    .venv/bin/python -m bench.turn_cpu --profile 40             # + cProfile of 40 turns run one by one
                                                                # (also saved to bench/out/turn_cpu.prof)
    .venv/bin/python -m bench.turn_cpu --show-queries           # the SQL of one turn

What a Celery worker thread does for one conversation, without Celery or the web process: N
conversations each get one pending user message (as ingest stores it), then a thread pool runs
``runtime.conversation_process`` for each, as the worker's task does. The fake LLM (zero latency)
and the fake Feishu run as separate processes, so ``time.process_time()`` of this process is the
worker's share: the turn runner, pipeline, ORM, LLM client, Feishu client and logging (stderr is
written to bench/out/turn_cpu.log, as a worker writes its log). Queries are counted per thread
with ``connection.execute_wrapper``. Every turn must end ``succeeded`` or the run fails.

Uses PostgreSQL database ``oa_turns_bench`` (dropped and re-created; BENCH_PG for the server URL)
and Redis db 2 (BENCH_REDIS). Writes bench/out/turn_cpu.json (not in git).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._stack import free_port, port_open  # noqa: E402

OUT = ROOT / "bench" / "out"
PYTHON = sys.executable
ANSWER = "Benchmark answer: the platform streamed this text into a Feishu card. " * 2
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB", "oa_turns_bench")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/2")


def _env() -> None:
    os.environ.update(
        DATABASE_URL=f"{PG}/{DB_NAME}",
        REDIS_URL=REDIS,
        SECRET_KEY="bench-secret-key",
        OMNIAGENT_ENCRYPTION_KEYS="dGVzdC1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA=",
        OMNIAGENT_TASK_RUNNER="inprocess",
        OMNIAGENT_INPROCESS_SWEEP="0",
        FEISHU_RATE_PER_SECOND="100000",  # the fake has no quota; measure the platform
        LOG_FORMAT="json",
        DJANGO_SETTINGS_MODULE="omniagent.settings",
    )


def _database_create() -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env={**os.environ}, stdout=subprocess.DEVNULL
    )


def _start(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv} did not start; see {log}")
        time.sleep(0.1)
    return proc


def _provision(*, feishu_url: str, llm_url: str, origin: str) -> dict:
    from apps.agents.models import Agent
    from apps.bindings.models import Binding
    from apps.bots.models import Bot
    from apps.tenants.models import Tenant

    tenant = Tenant.objects.create(slug="bench", name="Bench", time_zone="UTC")
    agent = Agent.objects.create(
        tenant=tenant, slug="bench", name="Bench", base_url=f"{llm_url}/v1", api_key="bench-llm-key",
        model="bench-model", system_prompt="You are the benchmark agent.", timeout=30,
    )  # fmt: skip
    bot = Bot.objects.create(
        tenant=tenant, name="bench", app_id="cli_bench_turns", app_secret="bench-app-secret",
        verification_token="bench-token", encrypt_key="benchEncryptKey0123456789abcdef",
        base_url=feishu_url, bot_open_id="ou_bench_bot",
    )  # fmt: skip
    Binding.objects.create(tenant=tenant, bot=bot, agent=agent, chat_type=Binding.ChatType.ANY, require_mention=False)
    return {"tenant": tenant, "agent": agent, "bot": bot, "origin": origin}


def _conversations(setup: dict, prefix: str, count: int) -> list[int]:
    """``count`` p2p conversations with one pending message each, as ingest leaves them."""
    from django.utils import timezone

    from apps.transcripts.models import Conversation, Message

    now = timezone.now()
    tenant, bot, origin = setup["tenant"], setup["bot"], setup["origin"]
    rows = [
        Conversation(
            tenant=tenant,
            origin=origin,
            key=f"bench:{prefix}:{i}",
            bot=bot,
            agent=setup["agent"],
            chat_id=f"oc_{prefix}_{i:05d}",
            chat_type="p2p",
            user_open_id=f"ou_{prefix}_{i:05d}",
            last_activity_at=now,
        )  # fmt: skip
        for i in range(count)
    ]
    conversations = Conversation.objects.bulk_create(rows)
    Message.objects.bulk_create(
        Message(
            tenant=tenant,
            conversation=c,
            role=Message.Role.USER,
            status=Message.Status.PENDING,
            content=f"benchmark question {i}",
            sender_open_id=c.user_open_id,
            bot=bot,
            external_id=f"om_{prefix}_{i:05d}",
            trace_id=f"trace{prefix}{i:05d}",
        )  # fmt: skip
        for i, c in enumerate(conversations)
    )
    return [c.pk for c in conversations]


class QueryCounter:
    """Counts statements of every thread that installs it (connection.execute_wrapper)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.kinds: Counter[str] = Counter()
        self.recorded: list[str] | None = None
        self.transactions = 0  # each is a BEGIN and a COMMIT/ROLLBACK round trip as well

    def transaction_end(self) -> None:
        with self.lock:
            self.transactions += 1
            if self.recorded is not None:
                self.recorded.append("-- COMMIT/ROLLBACK (with its BEGIN)")

    def __call__(self, execute, sql, params, many, context):
        kind = sql.lstrip().split(None, 1)[0].upper() if sql else "?"
        with self.lock:
            self.total += 1
            self.kinds[kind] += 1
            if self.recorded is not None:
                self.recorded.append(sql)
        return execute(sql, params, many, context)


_current = threading.local()


def _count_transactions() -> None:
    """Count COMMIT/ROLLBACK of the threads that run turns (execute_wrapper does not see them)."""
    from django.db.backends.base.base import BaseDatabaseWrapper

    for name in ("_commit", "_rollback"):
        original = getattr(BaseDatabaseWrapper, name)

        def wrapped(self, original=original):
            counter = getattr(_current, "counter", None)
            if counter is not None and self.connection is not None:
                counter.transaction_end()
            return original(self)

        setattr(BaseDatabaseWrapper, name, wrapped)


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a child process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu() -> float:
    """CPU seconds of PostgreSQL's sessions on the benchmark database and of its background processes
    (WAL writer, checkpointer, autovacuum...: shared with other databases, mostly ours here)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
                session = "(" in title or "[local]" in title
                if not session or f" {DB_NAME} " in title:
                    total += _proc_cpu(int(entry.name))
            except OSError:
                continue  # gone meanwhile, or not ours to read
    return total


def _run_one(conversation_id: int, counter: QueryCounter) -> None:
    from django.db import connection

    from apps.runtime.tasks import conversation_process_task

    _current.counter = counter
    try:
        with connection.execute_wrapper(counter):
            conversation_process_task(conversation_id)  # the Celery task body, run in this thread
    finally:
        _current.counter = None


def _run(ids: list[int], threads: int, counter: QueryCounter) -> None:
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="turn") as pool:
        for future in [pool.submit(_run_one, cid, counter) for cid in ids]:
            future.result()


def _check(ids: list[int]) -> dict[str, int]:
    from apps.transcripts.models import Message, Turn

    statuses = Counter(Turn.objects.filter(conversation_id__in=ids).values_list("status", flat=True))
    waiting = Message.objects.filter(conversation_id__in=ids, role="user", status__in=["pending", "processing"]).count()
    if statuses.get("succeeded", 0) != len(ids) or waiting:
        raise SystemExit(f"not every turn succeeded: {dict(statuses)}, {waiting} user messages unanswered")
    return dict(statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--threads", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=30, help="turns run first, not measured")
    parser.add_argument("--origin", choices=("feishu", "null"), default="feishu",
                        help="feishu: the real Feishu responder against the fake; null: transcript only")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="measured rounds (fresh conversations each)")
    parser.add_argument("--profile", type=int, default=0, help="then cProfile this many turns run one by one")
    parser.add_argument("--show-queries", action="store_true", help="print the SQL of one turn")
    parser.add_argument("--out", type=Path, default=OUT / "turn_cpu.json")
    args = parser.parse_args()

    _env()
    OUT.mkdir(parents=True, exist_ok=True)
    _database_create()
    logs = OUT / "logs" / "turn_cpu"
    logs.mkdir(parents=True, exist_ok=True)
    llm_port, feishu_port = free_port(), free_port()
    procs = [
        _start(
            [PYTHON, "-m", "tests.fakes.llm", "--port", str(llm_port), "--latency", "0", "--text", ANSWER],
            llm_port,
            logs / "fake-llm.log",
        ),  # fmt: skip
        _start(
            [
                PYTHON,
                "-m",
                "bench._stack",
                "fake-feishu",
                "--port",
                str(feishu_port),
                "--dump",
                str(logs / "fake-feishu-requests.json"),
            ],
            feishu_port,
            logs / "fake-feishu.log",
        ),  # fmt: skip
    ]
    try:
        import django

        django.setup()
        import logging

        logging.getLogger().handlers[0].setStream((OUT / "turn_cpu.log").open("w"))  # type: ignore[attr-defined]
        from django.db import connection

        _count_transactions()
        origin = "feishu" if args.origin == "feishu" else "bench-null"
        setup = _provision(
            feishu_url=f"http://127.0.0.1:{feishu_port}", llm_url=f"http://127.0.0.1:{llm_port}", origin=origin
        )
        from apps.runtime.warmup import runtime_warm_up

        runtime_warm_up()
        warm = _conversations(setup, "warm", args.warmup)
        _run(warm, args.threads, QueryCounter())
        _check(warm)
        if args.show_queries:
            one = _conversations(setup, "show", 1)
            counter = QueryCounter()
            counter.recorded = []
            _run(one, 1, counter)
            for number, sql in enumerate(counter.recorded, 1):
                print(f"{number:2d}. {sql[:300]}")
        rounds = []
        for r in range(args.repeat):
            ids = _conversations(setup, f"m{r}", args.conversations)
            connection.close()
            counter = QueryCounter()
            fakes = [_proc_cpu(p.pid) for p in procs]
            pg_cpu = _postgres_cpu()
            wall, cpu = time.perf_counter(), time.process_time()
            _run(ids, args.threads, counter)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            llm_cpu, feishu_cpu = (_proc_cpu(p.pid) - before for p, before in zip(procs, fakes, strict=True))
            pg_cpu = _postgres_cpu() - pg_cpu
            statuses = _check(ids)
            n = len(ids)
            rounds.append(
                {
                    "cpu_ms_per_turn": round(cpu * 1000 / n, 2),
                    "queries_per_turn": round(counter.total / n, 2),
                    "transactions_per_turn": round(counter.transactions / n, 2),
                    "round_trips_per_turn": round((counter.total + 2 * counter.transactions) / n, 2),
                    "queries_by_kind_per_turn": {k: round(v / n, 2) for k, v in counter.kinds.most_common()},
                    "wall_s": round(wall, 2),
                    "fake_llm_cpu_ms_per_turn": round(llm_cpu * 1000 / n, 2),
                    "fake_feishu_cpu_ms_per_turn": round(feishu_cpu * 1000 / n, 2),
                    "postgres_cpu_ms_per_turn": round(pg_cpu * 1000 / n, 2),
                    "statuses": statuses,
                }
            )
            print(
                f"round {r + 1}: {n} turns, {args.threads} threads, origin {args.origin}: "
                f"CPU {cpu * 1000 / n:.2f} ms/turn, {counter.total / n:.2f} queries/turn "
                f"+ {counter.transactions / n:.2f} transactions "
                f"{dict(rounds[-1]['queries_by_kind_per_turn'])}, wall {wall:.2f} s; "
                f"fakes: LLM {llm_cpu * 1000 / n:.2f} ms/turn, Feishu {feishu_cpu * 1000 / n:.2f} ms/turn; "
                f"PostgreSQL {pg_cpu * 1000 / n:.2f} ms/turn",
                flush=True,
            )
        profile_text = ""
        if args.profile:
            ids = _conversations(setup, "prof", args.profile)
            connection.close()
            profiler = cProfile.Profile(time.thread_time)  # CPU of this thread, not waiting
            counter = QueryCounter()
            profiler.enable()
            for cid in ids:
                _run_one(cid, counter)
            profiler.disable()
            _check(ids)
            stream = io.StringIO()
            stats = pstats.Stats(profiler, stream=stream)
            stats.dump_stats(OUT / "turn_cpu.prof")  # for pstats / snakeviz
            stats.sort_stats("cumulative").print_stats(60)
            stats.sort_stats("tottime").print_stats(40)
            profile_text = stream.getvalue()
            print(profile_text)
        best = min(rounds, key=lambda x: x["cpu_ms_per_turn"]) if rounds else {}
        result = {
            "conversations": args.conversations,
            "threads": args.threads,
            "origin": args.origin,
            "rounds": rounds,
            "best_cpu_ms_per_turn": best.get("cpu_ms_per_turn"),
            "queries_per_turn": best.get("queries_per_turn"),
            "transactions_per_turn": best.get("transactions_per_turn"),
            "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


if __name__ == "__main__":
    main()
