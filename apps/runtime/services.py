"""Turn pipeline entry point (implemented by the agent runtime work, issue 4)."""

from __future__ import annotations


def conversation_process(*, conversation_id: int) -> None:
    """Answer the conversation's pending user messages, one turn at a time, in arrival order."""
    raise NotImplementedError("agent runtime not built yet")
