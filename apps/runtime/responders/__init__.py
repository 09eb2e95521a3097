"""Responders deliver a turn's events to a channel; see base.py for the interface."""

from __future__ import annotations

import importlib
import logging
import threading

logger = logging.getLogger(__name__)

# One line per channel module; each registers itself with @register_responder(origin).
_BUILTIN = [
    "apps.runtime.responders.feishu",
    "apps.runtime.responders.web",
]


_loaded = False
_lock = threading.Lock()


def load_responders() -> None:
    """Import the channel modules once; concurrent first turns wait for one import, not race it."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if not _loaded:
            _load()
            _loaded = True


def _load() -> None:
    for module in _BUILTIN:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A channel module that is not written yet (web chat) must not break the others.
            if exc.name != module:
                raise
            logger.debug("responder module %s not present", module)
