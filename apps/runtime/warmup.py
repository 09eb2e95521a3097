"""Pay the first-turn import costs at process start instead of inside the first user's turn."""

from __future__ import annotations

import threading


def runtime_warm_up() -> None:
    # First use imports lark-oapi (responders), the tool modules and the openai SDK's lazy modules:
    # seconds of CPU that the first turns would otherwise pay, holding the GIL.
    from apps.runtime.llm import llm_warm_up
    from apps.runtime.responders import load_responders
    from apps.runtime.tools import tool_get

    load_responders()
    tool_get("calc")
    llm_warm_up()


def runtime_warm_up_in_background() -> None:
    """For the embedded default: the web process serves at once while the turn machinery loads."""
    threading.Thread(target=runtime_warm_up, name="runtime-warm-up", daemon=True).start()
