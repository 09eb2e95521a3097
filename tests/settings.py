"""Test settings: the real stack (PostgreSQL + Redis on this machine), fixed keys, fast hashing.

Override DATABASE_URL / REDIS_URL to point elsewhere (e.g. a separate database per parallel run).
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/omniagent")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
# Two fixed test keys: the first encrypts, the second proves old values stay readable.
os.environ.setdefault(
    "OMNIAGENT_ENCRYPTION_KEYS",
    "dGVzdC1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA=,b2xkLXRlc3Qta2V5LTAwMDAwMDAwMDAwMDAwMDAwMDA=",
)
os.environ.setdefault("LOG_FORMAT", "console")
os.environ.setdefault("OMNIAGENT_DATA_DIR", "/tmp/omniagent-test-data")

from omniagent.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests drive turns explicitly unless a test opts into a runner.
TASK_RUNNER = os.environ.get("OMNIAGENT_TASK_RUNNER", "inprocess")
# Tests sweep explicitly; a background sweeper would race them.
INPROCESS_SWEEP = False
# Injected Feishu faults should not slow the suite; the backoff shape is tested with its own values.
FEISHU_RETRY_BASE_DELAY = 0.01
