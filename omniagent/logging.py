"""structlog setup: JSON lines in production, readable console locally; trace ids bound per turn."""

from __future__ import annotations

import logging
import sys

import structlog

SECRET_KEYS = {
    "app_secret",
    "api_key",
    "encrypt_key",
    "verification_token",
    "access_token",
    "refresh_token",
    "password",
    "authorization",
    "secret",
    "key",
}


def _drop_secrets(_logger, _name, event_dict):
    # Belt and braces: a secret passed as a log field by mistake is masked, never written.
    for field in list(event_dict):
        if field.lower() in SECRET_KEYS:
            event_dict[field] = "***"
    return event_dict


def configure_logging(*, fmt: str, level: str) -> None:
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        # Level first: an event below the level costs a check, not the whole chain (a turn logs a few
        # info events; at LOG_LEVEL=warning they used to be stamped and formatted, then dropped).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "Lark", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
