"""Responders deliver a turn's events to a channel; see base.py for the interface."""

from __future__ import annotations

import importlib
import logging
from functools import cache

logger = logging.getLogger(__name__)

# One line per channel module; each registers itself with @register_responder(origin).
_BUILTIN = [
    "apps.runtime.responders.feishu",
    "apps.runtime.responders.web",
]


@cache
def load_responders() -> None:
    for module in _BUILTIN:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A channel module that is not written yet (web chat) must not break the others.
            if exc.name != module:
                raise
            logger.debug("responder module %s not present", module)
