"""The web chat in a real browser: headless Chromium (Debian's) driven by playwright-core.

Needs `chromium` (apt) and playwright-core (`npm install --no-save --no-package-lock playwright-core`
in the repository root, or NODE_PATH pointing at a node_modules that has it); skipped otherwise.
Serves the real ASGI app with uvicorn in a thread, on the test database; turns run in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from apps.runtime.responders import load_responders
from tests.factories import AgentFactory
from tests.fakes.llm import Reply, ToolCall

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("browser_chat.js")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE_PATH = os.pathsep.join(p for p in (os.environ.get("NODE_PATH", ""), str(ROOT / "node_modules")) if p)


def _playwright_available() -> bool:
    if not (CHROMIUM and shutil.which("node")):
        return False
    probe = subprocess.run(
        ["node", "-e", "require.resolve('playwright-core')"], env={**os.environ, "NODE_PATH": NODE_PATH},
        capture_output=True,
    )  # fmt: skip
    return probe.returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not _playwright_available() and not os.environ.get("OMNIAGENT_REQUIRE_BROWSER"),
        reason="needs chromium and playwright-core (CI installs both and sets OMNIAGENT_REQUIRE_BROWSER)",
    ),
]


def test_the_browser_tools_are_installed_when_required():
    # Under CI a missing browser must fail, not skip the web chat's browser test silently.
    assert _playwright_available(), "chromium and playwright-core are required (OMNIAGENT_REQUIRE_BROWSER is set)"


@pytest.fixture
def live_server_url():
    import uvicorn
    from channels.routing import ProtocolTypeRouter
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
    from django.core.asgi import get_asgi_application

    from omniagent.asgi import application

    # Real mode does not serve static files (a proxy does); the page needs its JS and the admin CSS.
    app = ProtocolTypeRouter({"http": ASGIStaticFilesHandler(get_asgi_application()), "websocket": application})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_it_chats_streams_shows_tools_escapes_html_stops_and_resets(
    personas,
    fake_llm,
    live_server_url,
):
    load_responders()
    agent = AgentFactory(
        tenant=personas.tenant_a, name="Helper", base_url=fake_llm.base_url, model="fake-model", tools=["time.now"]
    )
    hostile = '<script>window.__injected = true</script><img src=x onerror="window.__injected = true">'
    fake_llm.script(
        Reply(tool_calls=[ToolCall("time.now", {"timezone": "UTC"})]),
        Reply(text="It is **{tool_result}**.\n\n- one\n- two\n\n" + hostile, token_delay=0.04, chunk_chars=5),
        Reply(text="Once upon a time " * 200, token_delay=0.05, chunk_chars=4),
    )
    screenshot = ROOT / "bench" / "out" / "webchat.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        ["node", str(SCRIPT)],
        env={
            **os.environ,
            "NODE_PATH": NODE_PATH,
            "BASE_URL": live_server_url,
            "USERNAME": personas.owner_a.username,
            "PASSWORD": "pw-for-tests",
            "AGENT_ID": str(agent.pk),
            "SCREENSHOT": str(screenshot),
            "CHROMIUM": CHROMIUM,
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    seen = json.loads(run.stdout or "{}")
    assert "error" not in seen, (seen, run.stderr[-2000:])
    # Chromium asks for /favicon.ico on its own (a 404 here); the page's own requests must all succeed.
    assert [e for e in seen["consoleErrors"] if not e.startswith("Failed to load resource")] == []
    assert seen["notFound"] == []
    assert seen["userText"] == "What time is it?"
    assert seen["toolName"] == "time.now" and "ok" in seen["toolState"]
    assert seen["snapshots"] >= 5, "the answer should appear piece by piece"
    html = seen["answerHtml"]
    assert "<strong>" in html and "<li>one</li>" in html
    # Model output is shown as text, never as markup.
    assert "&lt;script&gt;" in html and seen["scriptsInLog"] == 0 and seen["injected"] is False
    assert seen["stopped"] is True
    assert seen["afterResetMessages"] == 0
