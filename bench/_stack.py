"""Run the real OmniAgent stack as subprocesses for benchmarks, and measure it.

    with Stack(name="concurrency") as stack:
        stack.database_create()                      # DROP + CREATE omniagent_bench, then migrate
        llm = stack.start_fake_llm(latency=2.0, text="...")
        feishu = stack.start_fake_feishu()
        web = stack.start_web()                      # uvicorn omniagent.asgi:application
        stack.start_worker(concurrency=200)          # celery -A omniagent worker -P threads
        stack.start_beat()
        stack.django_setup()                         # this process may now use the ORM on the same DB
        ...
        stack.memory()                               # RSS/PSS of each process incl. children

Every child gets the same environment: real mode (DATABASE_URL on a dedicated database, REDIS_URL on
a dedicated Redis db that is flushed first), fixed bench keys, JSON logs at WARNING into
bench/out/logs/<name>.log. Children are stopped (SIGTERM, then SIGKILL) on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.popen.returncode}; see {proc.log_path}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s" + (f"; see {proc.log_path}" if proc else ""))


def http_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=1).status_code < 500


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- memory -----------------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Celery's pool, uvicorn's workers, ...)."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _status_kib(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Memory:
    """Resident memory of one process tree, in MiB. RSS counts shared pages once per process (an
    upper bound); PSS splits them between the processes sharing them (sums add up honestly)."""

    rss_mib: float
    pss_mib: float
    processes: int


def tree_memory(pid: int, pids: list[int] | None = None, *, with_pss: bool = True) -> Memory:
    """With ``with_pss=False`` PSS is reported as 0 (reading it walks the process's page tables)."""
    pids = pids if pids is not None else process_tree(pid)
    rss = sum(_status_kib(p, "VmRSS") for p in pids)
    pss = sum(_pss_kib(p) for p in pids) if with_pss else 0
    return Memory(rss_mib=rss / 1024, pss_mib=pss / 1024, processes=len(pids))


# --- CPU: how busy the machine was, and how much of that was someone else ----------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int]:
    """(busy, stolen) jiffies of the whole machine since boot. Stolen: time the hypervisor ran someone
    else on our virtual CPUs while they had work (a VM's "slow phases")."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]) - idle - steal, steal


def _machine_busy_jiffies() -> int:
    return _machine_jiffies()[0]


def machine_speed_ms(rounds: int = 10) -> float:
    """Wall milliseconds a fixed pure-Python workload takes, best of ``rounds``: this VM's speed drifts
    by tens of percent within minutes, so runs compare only at similar values."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        table = {}
        for i in range(200_000):
            table[i & 1023] = i * i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def _tree_jiffies(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                after = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(after[11]) + int(after[12])  # utime + stime
    return total


def _own_jiffies() -> int:
    with open(f"/proc/{os.getpid()}/stat") as f:
        after = f.read().rsplit(")", 1)[1].split()
    return int(after[11]) + int(after[12])


@dataclass
class CpuWindow:
    """CPU used during a window, in cores: per child process tree, by this process, and by everything
    else on the machine. The machine may be shared (other test runs); ``others_cores`` says how much
    they took, so a figure measured under someone else's load can be recognised as such."""

    procs: dict[str, int]  # name -> pid of a child whose whole tree is measured
    seconds: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    ours_cores: float = 0.0
    others_cores: float = 0.0
    stolen_cores: float = 0.0
    _start: tuple[float, tuple[int, int], dict[str, int]] | None = None

    def _read(self) -> dict[str, int]:
        values = {name: _tree_jiffies(pid) for name, pid in self.procs.items()}
        values["bench driver"] = _own_jiffies()
        return values

    def __enter__(self) -> CpuWindow:
        self._start = (time.monotonic(), _machine_jiffies(), self._read())
        return self

    def __exit__(self, *exc: object) -> None:
        t0, (busy0, steal0), ours0 = self._start
        self.seconds = time.monotonic() - t0
        busy_now, steal_now = _machine_jiffies()
        busy = (busy_now - busy0) / CLK_TCK
        self.stolen_cores = round((steal_now - steal0) / CLK_TCK / self.seconds, 2)
        now = self._read()
        self.cpu_seconds = {name: round((now[name] - ours0.get(name, 0)) / CLK_TCK, 2) for name in now}
        ours = sum(self.cpu_seconds.values())
        self.ours_cores = round(ours / self.seconds, 2)
        self.others_cores = round(max(0.0, busy - ours) / self.seconds, 2)

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 1),
            "ours_cores": self.ours_cores,
            "others_cores": self.others_cores,
            "stolen_cores": self.stolen_cores,
            "cpu_seconds": self.cpu_seconds,
        }


def machine_busy_cores(seconds: float = 2.0) -> float:
    """How many cores the whole machine kept busy over the next ``seconds``."""
    before = _machine_busy_jiffies()
    time.sleep(seconds)
    return (_machine_busy_jiffies() - before) / CLK_TCK / seconds


def wait_for_quiet(*, max_cores: float, timeout: float, sample: float = 3.0) -> float:
    """Wait until the machine is nearly idle (others' tests finished); returns the last reading."""
    deadline = time.monotonic() + timeout
    busy = machine_busy_cores(sample)
    while busy > max_cores and time.monotonic() < deadline:
        print(f"   machine busy ({busy:.2f} cores in use by others), waiting for it to go quiet…", flush=True)
        busy = machine_busy_cores(sample)
    return busy


# --- processes --------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path
    port: int | None = None
    measured: bool = True  # part of "the platform" (web, worker, beat), not a fake

    def memory(self) -> Memory:
        return tree_memory(self.popen.pid)

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is not None:
            return
        # Each child leads its own process group, so this reaches its pool too, and only it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@dataclass
class MemorySampler:
    """Samples the platform processes' memory in the background; keeps the peak of the total."""

    procs: list[Proc]
    interval: float = 0.25
    peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0
    peak_by_process: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _trees: dict[int, list[int]] = field(default_factory=dict)
    _samples: int = 0

    def sample(self) -> None:
        # The sampler shares the cores it measures. Reading PSS makes the kernel walk each process's
        # page tables (under the lock its threads need to map memory), and finding each tree's children
        # lists every process of the machine: together a tenth of a core at 4 samples a second. So the
        # trees and PSS are read every 8th time; RSS, cheap to read, every time.
        full = self._samples % 8 == 0
        if full:
            self._trees = {proc.popen.pid: process_tree(proc.popen.pid) for proc in self.procs}
        self._samples += 1
        rss = pss = 0.0
        for proc in self.procs:
            m = tree_memory(proc.popen.pid, self._trees.get(proc.popen.pid), with_pss=full)
            rss += m.rss_mib
            pss += m.pss_mib
            self.peak_by_process[proc.name] = max(self.peak_by_process.get(proc.name, 0.0), m.rss_mib)
        self.peak_rss_mib = max(self.peak_rss_mib, rss)
        self.peak_pss_mib = max(self.peak_pss_mib, pss)

    def __enter__(self) -> MemorySampler:
        def run() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._samples = 0  # a full sample, PSS included
        self.sample()


@dataclass
class FakeFeishuProc:
    """The fake Feishu child; ``recorded()`` returns every request it received so far."""

    proc: Proc
    dump_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.proc.port}"

    def recorded(self, timeout: float = 30) -> list[dict]:
        with contextlib.suppress(FileNotFoundError):
            self.dump_path.unlink()
        os.kill(self.proc.popen.pid, signal.SIGUSR1)
        wait_for(self.dump_path.exists, timeout=timeout, what="fake Feishu request dump", proc=self.proc)
        return json.loads(self.dump_path.read_text())


class Stack:
    """The platform (web, worker, beat) and the fakes (Feishu, LLM) as child processes."""

    def __init__(
        self,
        *,
        name: str,
        db_name: str = "omniagent_bench",
        redis_url: str = "redis://127.0.0.1:6379/11",
        env: dict[str, str] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.name = name
        self.db_name = db_name
        self.database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + db_name
        self.redis_url = redis_url
        self.log_dir = OUT / "logs" / name
        shutil.rmtree(self.log_dir, ignore_errors=True)  # logs of this run only
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        # Fixed, bench-only keys: the bench database is thrown away after each run.
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "omniagent.settings",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": "bench-secret-key-not-for-production",
            "OMNIAGENT_ENCRYPTION_KEYS": base64.urlsafe_b64encode(b"omniagent-bench-key-".ljust(32, b"0")).decode(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": log_level,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        ready: Callable[[], bool] | None = None,
        timeout: float = 60,
        port: int | None = None,
        measured: bool = True,
        env: dict[str, str] | None = None,
    ) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "w")  # noqa: SIM115 - the child keeps writing after we return
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = Proc(name=name, argv=argv, popen=popen, log_path=log_path, port=port, measured=measured)
        self.procs.append(proc)
        if ready is not None:
            wait_for(ready, timeout=timeout, what=name, proc=proc)
        return proc

    # -- database and redis ----------------------------------------------------------------------
    def database_create(self) -> None:
        """Start from an empty dedicated database and Redis db, then migrate."""
        import psycopg
        import redis

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        redis.Redis.from_url(self.redis_url).flushdb()
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=self.env,
            check=True,
        )

    def django_setup(self) -> None:
        """Use the bench database from this process (provisioning, reading results)."""
        for key in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "OMNIAGENT_ENCRYPTION_KEYS"):
            os.environ[key] = self.env[key]
        os.environ.setdefault("LOG_LEVEL", "warning")
        import django

        django.setup()

    # -- the platform ----------------------------------------------------------------------------
    def start_web(
        self,
        *,
        port: int | None = None,
        workers: int = 1,
        app: str = "omniagent.asgi:application",
        factory: bool = False,
    ) -> Proc:
        port = port or free_port()
        argv = [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        if factory:
            argv.append("--factory")
        argv += ["--no-access-log", "--log-level", "warning", "--lifespan", "off", "--workers", str(workers)]
        return self.start("web", argv, port=port, ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=60)

    def start_worker(self, *, concurrency: int = 200, name: str = "worker") -> Proc:
        argv = [PYTHON, "-m", "celery", "-A", "omniagent", "worker", "-P", "threads", "-c", str(concurrency)]
        argv += ["-l", "warning", "--without-gossip", "--without-mingle", "-n", f"bench-{name}-{os.getpid()}@%h"]
        proc = self.start(name, argv)
        expected = sum(1 for p in self.procs if p.name.startswith("worker"))
        wait_for(lambda: self._workers_ready() >= expected, timeout=60, what=name, proc=proc)
        return proc

    def _workers_ready(self) -> int:
        from celery import Celery

        app = Celery(broker=self.redis_url)
        try:
            return len(app.control.ping(timeout=0.5))
        finally:
            app.close()

    def start_beat(self) -> Proc:
        schedule = self.log_dir / "beat-schedule"
        argv = [PYTHON, "-m", "celery", "-A", "omniagent", "beat", "-l", "warning"]
        argv += ["-S", "django_celery_beat.schedulers:DatabaseScheduler", "-s", str(schedule)]
        proc = self.start("beat", argv)
        time.sleep(1.0)  # beat has no readiness probe; make sure it did not die at start-up
        if proc.popen.poll() is not None:
            raise RuntimeError(f"beat exited with {proc.popen.returncode}; see {proc.log_path}")
        return proc

    # -- the fakes -------------------------------------------------------------------------------
    def start_fake_llm(
        self,
        *,
        port: int | None = None,
        latency: float | None = None,
        text: str | None = None,
        token_delay: float = 0.0,
        chunk_chars: int | None = None,
    ) -> Proc:
        port = port or free_port()
        argv = [PYTHON, "-m", "tests.fakes.llm", "--port", str(port)]
        if latency is not None:
            argv += ["--latency", str(latency)]
        if text is not None:
            argv += ["--text", text]
        if token_delay:
            argv += ["--token-delay", str(token_delay)]
        if chunk_chars:
            argv += ["--chunk-chars", str(chunk_chars)]
        return self.start(
            f"fake-llm-{port}", argv, port=port, measured=False, ready=lambda: port_open(port), timeout=30
        )

    def start_fake_feishu(self, *, port: int | None = None) -> FakeFeishuProc:
        """tests.fakes.feishu's server in its own process, able to dump what it recorded (see main())."""
        port = port or free_port()
        dump = self.log_dir / "fake-feishu-requests.json"
        argv = [PYTHON, "-m", "bench._stack", "fake-feishu", "--port", str(port), "--dump", str(dump)]
        proc = self.start("fake-feishu", argv, port=port, measured=False, ready=lambda: port_open(port), timeout=30)
        return FakeFeishuProc(proc=proc, dump_path=dump)

    # -- measurements ----------------------------------------------------------------------------
    def platform(self) -> list[Proc]:
        return [p for p in self.procs if p.measured]

    def memory(self) -> dict[str, Memory]:
        return {p.name: p.memory() for p in self.platform()}

    def sampler(self, interval: float = 0.25) -> MemorySampler:
        return MemorySampler(self.platform(), interval=interval)

    def cpu_window(self) -> CpuWindow:
        """Measure CPU over a block: this process and every child count as "ours"."""
        return CpuWindow({p.name: p.popen.pid for p in self.procs})

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")


# --- child entry points ------------------------------------------------------------------------------
def _fake_feishu_main(port: int, dump: Path) -> None:
    """Serve tests.fakes.feishu.FakeFeishu; on SIGUSR1 write its recorded requests to ``dump``."""
    from tests.fakes.feishu import FakeFeishu
    from tests.fakes.llm import fast_event_loop

    fast_event_loop()
    fake = FakeFeishu(port=port).start()
    print(f"fake Feishu on {fake.base_url}, dump on SIGUSR1 to {dump}", flush=True)
    wake = threading.Event()
    requested = {"dump": False, "stop": False}

    def on_signal(kind: str) -> Callable:
        def handler(*_: object) -> None:
            requested[kind] = True
            wake.set()

        return handler

    signal.signal(signal.SIGUSR1, on_signal("dump"))
    signal.signal(signal.SIGTERM, on_signal("stop"))
    signal.signal(signal.SIGINT, on_signal("stop"))
    while not requested["stop"]:
        wake.wait()
        wake.clear()
        if requested["dump"]:
            requested["dump"] = False
            rows = [
                {
                    "method": r.method,
                    "path": r.path,
                    "time": r.time,
                    "status": r.status,
                    "code": r.code,
                    "fault": r.fault,
                    "deduplicated": r.deduplicated,
                    "json": r.json,
                }
                for r in fake.requests
            ]
            tmp = dump.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, ensure_ascii=False))
            tmp.replace(dump)  # atomic: the reader never sees half a file
    fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="bench helpers run as child processes")
    sub = parser.add_subparsers(dest="command", required=True)
    feishu = sub.add_parser("fake-feishu", help="the fake Feishu server with a request dump on SIGUSR1")
    feishu.add_argument("--port", type=int, required=True)
    feishu.add_argument("--dump", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "fake-feishu":
        _fake_feishu_main(args.port, args.dump)


if __name__ == "__main__":
    main()
