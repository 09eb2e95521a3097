"""Acceptance: the run command on a fresh data folder serves an admin the demo admin can log into.

Runs bin/run itself (no DATABASE_URL / REDIS_URL, an empty OMNIAGENT_DATA_DIR), so it covers the
whole path a user takes: venv check, migrate, collectstatic, provision, uvicorn, real HTTP.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 240
REMOVED = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "OMNIAGENT_ENCRYPTION_KEYS",
    "DJANGO_SETTINGS_MODULE",
    "OMNIAGENT_DEMO_PASSWORD",
    "OMNIAGENT_DEMO_API_KEY",
    "OMNIAGENT_DEMO_USERNAME",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
    "OMNIAGENT_TASK_RUNNER",
    "OMNIAGENT_HOST",
    "OMNIAGENT_PROVISION_FILE",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningApp:
    process: subprocess.Popen
    base_url: str
    data_dir: Path
    llm_port: int
    output: list[str] = field(default_factory=list)

    def banner(self, label: str) -> str:
        for line in self.output:
            match = re.match(rf"\s+{label}:\s+(\S+)", line)
            if match:
                return match.group(1)
        raise AssertionError(f"no {label!r} line in bin/run output:\n{''.join(self.output)}")


def start_run_command(data_dir: Path, llm_port: int | None = None) -> RunningApp:
    port, llm_port = free_port(), llm_port or free_port()
    env = {k: v for k, v in os.environ.items() if k not in REMOVED and not k.startswith("PYTEST")}
    env |= {"OMNIAGENT_DATA_DIR": str(data_dir), "PORT": str(port), "DEMO_LLM_PORT": str(llm_port)}
    process = subprocess.Popen(
        ["bin/run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    app = RunningApp(process=process, base_url=f"http://127.0.0.1:{port}", data_dir=data_dir, llm_port=llm_port)
    threading.Thread(target=lambda: app.output.extend(iter(process.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"bin/run exited with {process.returncode}:\n{''.join(app.output)}")
        try:
            if httpx.get(f"{app.base_url}/healthz", timeout=2).status_code == 200:
                return app
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop(app)
    raise AssertionError(f"bin/run did not serve within {START_TIMEOUT}s:\n{''.join(app.output)}")


def stop(app: RunningApp) -> None:
    if app.process.poll() is None:
        app.process.send_signal(signal.SIGTERM)  # bin/run stops uvicorn and the demo LLM it started
        try:
            app.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(app.process.pid, signal.SIGKILL)
            app.process.wait()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("embedded") / "var"
    assert not path.exists()
    return path


@pytest.fixture(scope="module")
def app(data_dir) -> Iterator[RunningApp]:
    running = start_run_command(data_dir)
    yield running
    stop(running)


def admin_login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    login = client.get("/admin/login/?next=/admin/")
    assert login.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    response = client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"},
    )
    return response


def test_it_logs_the_demo_admin_into_the_admin_over_http(app):
    username, password = app.banner("username"), app.banner("password")
    assert app.banner("admin") == f"{app.base_url}/admin/"

    with httpx.Client(base_url=app.base_url, follow_redirects=True, timeout=10) as client:
        index = admin_login(client, username, password)
        assert index.status_code == 200
        assert str(index.url).endswith("/admin/")
        assert "Log out" in index.text and username in index.text
        tenants = client.get("/admin/tenants/tenant/")
        assert tenants.status_code == 200
        assert ">Demo<" in tenants.text


def test_it_rejects_a_wrong_password(app):
    with httpx.Client(base_url=app.base_url, follow_redirects=True, timeout=10) as client:
        response = admin_login(client, app.banner("username"), "not-the-password")
        assert str(response.url).endswith("/admin/login/?next=/admin/")
        assert "Please enter the correct username and password" in response.text


def test_it_keeps_its_data_and_secrets_in_the_data_folder(app):
    stored = {p.name for p in app.data_dir.iterdir()}
    assert {"omniagent.sqlite3", "secret_key", "encryption_key", "demo_admin_password"} <= stored
    assert (app.data_dir / "demo_admin_password").read_text().strip() == app.banner("password")
    assert (app.data_dir / "demo_admin_password").stat().st_mode & 0o077 == 0


def test_it_serves_the_admin_stylesheet(app):
    response = httpx.get(f"{app.base_url}/static/admin/css/base.css", timeout=10)
    assert response.status_code == 200 and "text/css" in response.headers["content-type"]


def test_it_restarts_on_the_same_data_with_the_same_login(app, data_dir):
    password = app.banner("password")
    stop(app)
    # Same demo LLM port, so the demo agent's base URL is the same as in the first run.
    again = start_run_command(data_dir, llm_port=app.llm_port)
    try:
        assert again.banner("password") == password
        assert any("already up to date" in line for line in again.output), "".join(again.output)
        with httpx.Client(base_url=again.base_url, follow_redirects=True, timeout=10) as client:
            index = admin_login(client, again.banner("username"), password)
            assert "Log out" in index.text
    finally:
        stop(again)
