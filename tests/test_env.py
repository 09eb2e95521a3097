"""Start-up configuration (DESIGN 4.2): a bad value stops start-up with a message naming the variable.

Each case starts a fresh interpreter with the production settings module, as `manage.py` or the ASGI
server would, because settings are read once per process.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "dGVzdC1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="
CONFIG_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "OMNIAGENT_ENCRYPTION_KEYS",
    "ALLOWED_HOSTS",
    "DEBUG",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "TIME_ZONE",
    "OMNIAGENT_DATA_DIR",
    "OMNIAGENT_TASK_RUNNER",
)


def start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES and not k.startswith("PYTEST")}
    base |= {"DJANGO_SETTINGS_MODULE": "omniagent.settings", "OMNIAGENT_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "variable", "detail"),
    [
        ({"DATABASE_URL": "mysql://db/omniagent"}, "DATABASE_URL", "scheme postgres"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL", "must be a URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL", "scheme redis"),
        ({"DEBUG": "maybe"}, "DEBUG", "must be a boolean"),
        ({"TIME_ZONE": "Mars/Olympus_Mons"}, "TIME_ZONE", "IANA time zone"),
        ({"OMNIAGENT_ENCRYPTION_KEYS": "c2hvcnQta2V5"}, "OMNIAGENT_ENCRYPTION_KEYS", "32 bytes"),
        ({"OMNIAGENT_ENCRYPTION_KEYS": "!!!not base64!!!"}, "OMNIAGENT_ENCRYPTION_KEYS", "urlsafe base64"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "json, console"),
        (
            {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/omniagent", "OMNIAGENT_ENCRYPTION_KEYS": GOOD_KEY},
            "SECRET_KEY",
            "must be set",
        ),
        (
            {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/omniagent", "SECRET_KEY": "s" * 50},
            "OMNIAGENT_ENCRYPTION_KEYS",
            "must be set",
        ),
    ],
)
def test_it_refuses_to_start_on_a_bad_value_naming_the_variable(tmp_path, env, variable, detail):
    result = start(tmp_path, **env)
    assert result.returncode != 0
    assert "started" not in result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    assert variable in last_line and detail in last_line, result.stderr


def test_it_starts_on_the_embedded_default_and_generates_its_secrets_once(tmp_path):
    first = start(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "SECRET_KEY not set: generated one" in first.stderr
    secret = (tmp_path / "data" / "secret_key").read_text()
    key = (tmp_path / "data" / "encryption_key").read_text()

    second = start(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "generated" not in second.stderr
    assert (tmp_path / "data" / "secret_key").read_text() == secret
    assert (tmp_path / "data" / "encryption_key").read_text() == key


def test_it_starts_in_real_mode_when_everything_required_is_set(tmp_path):
    result = start(
        tmp_path,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/omniagent",
        REDIS_URL="redis://127.0.0.1:6379/3",
        SECRET_KEY="s" * 50,
        OMNIAGENT_ENCRYPTION_KEYS=GOOD_KEY,
        DEBUG="false",
        TIME_ZONE="Asia/Shanghai",
    )
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout
    assert not (tmp_path / "data" / "secret_key").exists()


def test_every_variable_the_settings_read_is_documented_in_the_example_env():
    read = set()
    for path in (ROOT / "omniagent").glob("*.py"):
        read |= set(re.findall(r"env_[a-z]+\(\s*\"([A-Z][A-Z0-9_]+)\"", path.read_text()))
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", (ROOT / "config" / "example.env").read_text(), re.M))
    assert {"DATABASE_URL", "SECRET_KEY", "OMNIAGENT_ENCRYPTION_KEYS"} <= read
    assert read - documented == set()
