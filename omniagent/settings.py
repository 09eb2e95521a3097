"""OmniAgent settings, read from the environment (see README "Configuration").

Embedded default: no DATABASE_URL and no REDIS_URL -> SQLite in the data folder, in-memory channel
layer, local-memory cache, turns run in a thread pool inside the web process.
Real mode: DATABASE_URL (PostgreSQL) and REDIS_URL -> pooled psycopg 3, Redis channel layer, cache
and Celery broker; SECRET_KEY and OMNIAGENT_ENCRYPTION_KEYS are then required.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import dj_database_url

from omniagent.crypto import generate_key
from omniagent.env import (
    EnvError,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_required,
    env_str,
    env_timezone,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("OMNIAGENT_DATA_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var")

DATABASE_URL = env_url("DATABASE_URL", ("postgres", "postgresql", "sqlite"))
REDIS_URL = env_url("REDIS_URL", ("redis", "rediss"))
REAL_MODE = DATABASE_URL is not None
EMBEDDED = DATABASE_URL is None and REDIS_URL is None


def _local_secret(filename: str, make: Callable[[], str], variable: str) -> str:
    """Generate a secret once into the data folder; only the embedded default may do this."""
    path = DATA_DIR / filename
    if path.exists():
        return path.read_text().strip()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value)
    path.chmod(0o600)
    warnings.warn(f"{variable} not set: generated one into {path} (embedded default only)", stacklevel=1)
    return value


if REAL_MODE:
    SECRET_KEY = env_required("SECRET_KEY", "real mode (DATABASE_URL set) needs a stable secret key")
    OMNIAGENT_ENCRYPTION_KEYS = env_list("OMNIAGENT_ENCRYPTION_KEYS")
    if not OMNIAGENT_ENCRYPTION_KEYS:
        raise EnvError(
            "OMNIAGENT_ENCRYPTION_KEYS must be set in real mode (DATABASE_URL set): 32-byte urlsafe base64 keys"
        )
else:
    SECRET_KEY = env_str("SECRET_KEY") or _local_secret(
        "secret_key", lambda: generate_key() + generate_key(), "SECRET_KEY"
    )
    OMNIAGENT_ENCRYPTION_KEYS = env_list("OMNIAGENT_ENCRYPTION_KEYS") or [
        _local_secret("encryption_key", generate_key, "OMNIAGENT_ENCRYPTION_KEYS")
    ]

# Validate the key ring now so a bad key stops start-up, not the first save.
from omniagent.crypto import build_ring  # noqa: E402

build_ring(OMNIAGENT_ENCRYPTION_KEYS)

DEBUG = env_bool("DEBUG", default=False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
TIME_ZONE = env_timezone("TIME_ZONE", "UTC")
USE_TZ = True
USE_I18N = True
LANGUAGE_CODE = "en-us"
LOG_FORMAT = env_choice("LOG_FORMAT", ("json", "console"), "console" if EMBEDDED else "json")
LOG_LEVEL = env_choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info").upper()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "django_celery_beat",
    "apps.tenants",
    "apps.audit",
    "apps.bots",
    "apps.agents",
    "apps.bindings",
    "apps.transcripts",
    "apps.oauth",
    "apps.feishu",
    "apps.runtime",
    "apps.webchat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "omniagent.urls"
ASGI_APPLICATION = "omniagent.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------------------
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL)
    if _db["ENGINE"] == "django.db.backends.postgresql":
        # psycopg 3 pool: turns release their connection while waiting on the LLM, so a small
        # pool serves hundreds of turns in flight. Django's pool requires CONN_MAX_AGE = 0.
        _db["CONN_MAX_AGE"] = 0
        if env_bool("DB_POOL", default=True):
            _db["OPTIONS"] = {
                "pool": {
                    "min_size": env_int("DB_POOL_MIN", 2, minimum=0),
                    "max_size": env_int("DB_POOL_MAX", 20, minimum=1),
                    "timeout": env_int("DB_POOL_TIMEOUT", 10, minimum=1),
                }
            }
    DATABASES = {"default": _db}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "omniagent.sqlite3"),
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis: cache, channel layer, celery ------------------------------------------------------
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Turn execution: "celery" when a broker exists, otherwise a thread pool in this process.
TASK_RUNNER = env_choice("OMNIAGENT_TASK_RUNNER", ("celery", "inprocess"), "celery" if REDIS_URL else "inprocess")
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
# Without this Celery builds a result backend object (here the "disabled" one) per thread, on each
# thread's first task: ~4 % of a worker's CPU in a burst that reaches threads that never ran a task.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# No Redis ack emulation: it costs every task two Redis round trips and a new Redis client object in
# the worker's one consumer thread, and buys little here. Tasks are acked as they start (not
# acks_late); what must not be lost is in the database, and a wake-up reserved but not started when
# a worker stops or dies is redone by the beat sweep (runtime.conversations_sweep: unanswered
# messages without a live runner), well before ack emulation's one-hour visibility timeout would.
CELERY_BROKER_TRANSPORT_OPTIONS = {"ack_emulation": False}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- auth, static -----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
# The app serves /static/ itself on the embedded default (no proxy there); behind nginx, leave it off.
SERVE_STATIC = env_bool("OMNIAGENT_SERVE_STATIC", default=EMBEDDED)
LOGIN_URL = "admin:login"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {"TITLE": "OmniAgent API", "VERSION": "1.0.0"}

# --- product settings (sensible defaults, each overridable) -----------------------------------
FEISHU_DEFAULT_BASE_URL = "https://open.feishu.cn"
FEISHU_WEBHOOK_MAX_BYTES = env_int("FEISHU_WEBHOOK_MAX_BYTES", 1024 * 1024, minimum=1024)
FEISHU_WEBHOOK_REPLAY_WINDOW = env_int("FEISHU_WEBHOOK_REPLAY_WINDOW", 300, minimum=1)
FEISHU_EVENT_MAX_AGE = env_int("FEISHU_EVENT_MAX_AGE", 1800, minimum=1)
FEISHU_HTTP_TIMEOUT = env_int("FEISHU_HTTP_TIMEOUT", 10, minimum=1)
FEISHU_MAX_RETRIES = env_int("FEISHU_MAX_RETRIES", 4, minimum=0)
FEISHU_RATE_PER_SECOND = env_int("FEISHU_RATE_PER_SECOND", 40, minimum=1)
FEISHU_RETRY_BASE_DELAY = env_int("FEISHU_RETRY_BASE_DELAY_MS", 500, minimum=1) / 1000
FEISHU_RETRY_MAX_DELAY = env_int("FEISHU_RETRY_MAX_DELAY_MS", 10000, minimum=1) / 1000
TURN_LEASE_SECONDS = env_int("TURN_LEASE_SECONDS", 90, minimum=10)  # renewed every third of it
# Without Celery beat, the web process itself re-enqueues conversations whose runner died.
INPROCESS_SWEEP = env_bool("OMNIAGENT_INPROCESS_SWEEP", default=TASK_RUNNER == "inprocess")
INPROCESS_TURN_THREADS = env_int("INPROCESS_TURN_THREADS", 32, minimum=1)
# Turn threads of one process computing at once; the others queue in order (omniagent.gate). 0: no limit.
TURN_ACTIVE_SLOTS = env_int("TURN_ACTIVE_SLOTS", 4, minimum=0)

# --- logging ----------------------------------------------------------------------------------
from omniagent.logging import configure_logging  # noqa: E402

LOGGING_CONFIG = None
configure_logging(fmt=LOG_FORMAT, level=LOG_LEVEL)
