"""RUN: ask the model, run the tools it calls, stream the text to the responder."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from apps.runtime.errors import TurnCancelled
from apps.runtime.llm import parse_arguments, tool_calls_message
from apps.runtime.pipeline.parts import GuardedResponder, TurnState, db_release
from apps.runtime.tools import ToolContext, tool_run, tool_schemas

if TYPE_CHECKING:
    from apps.agents.models import Agent
    from apps.runtime.watch import ActiveTurn

logger = structlog.get_logger(__name__)


TEXT_BURST_SECONDS = 0.005


class TextRelay:
    """Passes the answer so far to the responder, collapsing bursts.

    Chunks that arrive together (one network read holds many when the model is fast or the network
    bunches them) would each cost a responder call; responders get the whole text so far and may
    drop intermediate updates anyway (responders/base.py), so only the last of a burst is passed on.
    A model streaming token by token (tens of ms apart) is passed on chunk by chunk as before.
    """

    def __init__(self, responder: GuardedResponder) -> None:
        self.responder = responder
        self.latest: str | None = None
        self.sent: str | None = None
        self.at = float("-inf")

    def push(self, text: str) -> None:
        self.latest = text
        now = time.monotonic()
        if now - self.at >= TEXT_BURST_SECONDS:
            self.at, self.sent = now, text
            self.responder.on_text_delta(text)

    def flush(self) -> None:
        if self.latest is not None and self.latest != self.sent:
            self.at, self.sent = time.monotonic(), self.latest
            self.responder.on_text_delta(self.latest)


def turn_llm_loop(
    *,
    agent: Agent,
    chat: list[dict[str, Any]],
    tools: list,
    state: TurnState,
    responder: GuardedResponder,
    active: ActiveTurn,
    started: float,
    tool_ctx: ToolContext,
) -> None:
    """Ask the model, run the tools it calls, ask again; at most agent.max_tool_rounds tool rounds."""
    llm = state.llm
    assert llm is not None  # made in BUILD
    schemas = tool_schemas(tools)
    relay = TextRelay(responder)
    for round_no in range(agent.max_tool_rounds + 1):
        offer = schemas if schemas and round_no < agent.max_tool_rounds else None
        prefix = state.visible + "\n\n" if state.visible else ""

        def on_text(text: str, prefix: str = prefix) -> None:
            if state.first_token_at is None:
                state.first_token_at = time.monotonic()
            state.visible = prefix + text
            relay.push(state.visible)

        try:
            completion = llm.chat(messages=chat, tools=offer, on_text=on_text)
        finally:
            relay.flush()  # the responder has the latest text before a tool, an error or the end
        state.visible = prefix + completion.text if completion.text else state.visible
        if not (completion.tool_calls and offer):
            return
        chat.append(tool_calls_message(completion.text, completion.tool_calls))
        for call in completion.tool_calls:
            if active.cancelled.is_set():
                raise TurnCancelled()
            arguments = parse_arguments(call["arguments"])
            responder.on_tool_start(call["name"], arguments)
            result = tool_run(name=call["name"], arguments_json=call["arguments"], ctx=tool_ctx, allowed=tools)
            db_release()
            logger.info("tool.call", tool=call["name"], ok=result.ok, duration_ms=result.duration_ms)
            responder.on_tool_end(call["name"], result.ok, result.summary)
            chat.append({"role": "tool", "tool_call_id": call["id"], "content": result.content})
            state.tool_records.append(
                {
                    "id": call["id"],
                    "name": call["name"],
                    "arguments": arguments,
                    "ok": result.ok,
                    "result": result.content,
                    "error_code": result.error_code,
                    "duration_ms": result.duration_ms,
                }
            )
        if active.cancelled.is_set():
            raise TurnCancelled()
