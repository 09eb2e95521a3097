"""lark-oapi's building blocks without its package ``__init__``.

``import lark_oapi`` (and so any ``from lark_oapi.core... import``) first runs the package's
``__init__``, which builds a ``Client`` class wired to every Open API service: about 10,600 modules,
~160 MB of memory and ~5 s of start-up in each process that touches Feishu. The client layer needs a
few dozen of them (core: tokens, config, request shaping; the request builders of the data APIs).
``lark_light()`` registers ``lark_oapi`` and ``lark_oapi.api`` as bare packages (their spec, their
path, their ``__init__`` not run), so their submodules import on their own: ~1,000 modules, ~38 MB.

Code that needs the whole SDK (the long-connection client, ``lark_oapi.ws``) calls ``lark_full()``,
which runs the two ``__init__``s into those same module objects, as a plain import would have.
If the package was imported before ``lark_light()`` ran, both are no-ops.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType

_PACKAGES = ("lark_oapi", "lark_oapi.api")  # parent first
_BARE = "_omniagent_bare"  # marks a package whose __init__ has not run
_lock = threading.Lock()


def lark_light() -> None:
    with _lock:
        for name in _PACKAGES:
            if name in sys.modules:
                continue
            spec = importlib.util.find_spec(name)
            if spec is None:
                raise ImportError(f"{name} is not installed")
            module = importlib.util.module_from_spec(spec)
            setattr(module, _BARE, True)
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)


def lark_full() -> ModuleType:
    """The complete ``lark_oapi`` package (``lark_oapi.ws``, ``lark_oapi.Client``, ...)."""
    with _lock:
        for name in reversed(_PACKAGES):  # lark_oapi's __init__ does `from .api import *`
            module = sys.modules.get(name)
            if module is not None and getattr(module, _BARE, False):
                delattr(module, _BARE)
                spec = module.__spec__
                assert spec is not None and spec.loader is not None  # lark_light() made it from its spec
                spec.loader.exec_module(module)
    import lark_oapi

    return lark_oapi
