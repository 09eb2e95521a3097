"""SAVE: the turn's transcript in one statement (or transaction), and memory compaction after answering."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
from django.db import transaction
from django.utils import timezone

from apps.runtime import store
from apps.runtime.errors import TurnError
from apps.runtime.llm import LLMSession
from apps.runtime.memory import Round, memory_compact, memory_select
from apps.runtime.pipeline.parts import TurnState, db_release
from apps.transcripts.models import Conversation, LLMCall, Message, Turn

if TYPE_CHECKING:
    from apps.agents.models import Agent

logger = structlog.get_logger(__name__)

# The user's and the answer's message status for a turn's outcome (any other outcome: failed).
_MESSAGE_STATUS: dict[str, str] = {
    Turn.Status.SUCCEEDED: Message.Status.DONE,
    Turn.Status.CANCELLED: Message.Status.CANCELLED,
}


def rounds_after(history: list[Round] | None, *, message: Message, answer: str) -> list[Round] | None:
    """BUILD's history plus this turn's round: a superset (same order) of what history_rounds would
    now read, so if all of it fits the memory limits, nothing needs folding."""
    if history is None:
        return None
    assistant = Message(role=Message.Role.ASSISTANT, content=answer)
    return [*history, Round(messages=[message, assistant])]


def turn_memory_compact(
    *,
    turn: Turn,
    conversation: Conversation,
    agent: Agent,
    llm: LLMSession,
    clock,
    rounds: list[Round] | None = None,
) -> None:
    """After answering, fold what the next turn could not replay, so the user never waits for it.

    BUILD still folds when something is left over (a failed fold, changed agent settings).
    ``rounds``: the session's rounds as known in memory (see rounds_after); when they all fit, the
    history is not read again (two queries per turn saved in the common case).
    """
    if rounds is not None:
        fold, _ = memory_select(rounds=rounds, agent=agent, summary=conversation.summary)
        if not fold:
            return
    started = time.monotonic()
    already = len(llm.calls)
    try:
        folded = memory_compact(conversation=conversation, agent=agent, llm=llm, through_turn_id=turn.pk)
    except Exception:
        logger.exception("memory.compact_failed")
        folded = False
    finally:
        db_release()
    calls = llm.calls[already:]
    if calls:
        LLMCall.objects.bulk_create([_llm_call_row(turn, c) for c in calls])
    if folded or calls:
        clock.timings["memory"] = int((time.monotonic() - started) * 1000)


def turn_save(
    *,
    turn: Turn,
    message: Message,
    assistant: Message | None,
    state: TurnState,
    outcome: str,
    error: TurnError | None,
    answer: str,
    started: float,
) -> None:
    """Write the transcript of the turn in one transaction."""
    calls = state.llm.calls if state.llm else []
    user_status = _MESSAGE_STATUS.get(outcome, Message.Status.FAILED)
    if assistant is not None:
        assistant.content = answer
        assistant.status = user_status
        assistant.tool_calls = [{k: v for k, v in r.items() if k != "result"} for r in state.tool_records]
        assistant.input_tokens = sum(c.input_tokens or 0 for c in calls) or None
        assistant.output_tokens = sum(c.output_tokens or 0 for c in calls) or None
        assistant.latency_ms = int((time.monotonic() - started) * 1000)
        assistant.error_code = error.code if error else ""
    first_token_ms = int((state.first_token_at - started) * 1000) if state.first_token_at else None
    tool_rows = [_tool_fields(r) for r in state.tool_records]
    call_rows = [_llm_call_fields(c) for c in calls]
    if store.fast():
        store.turn_close(
            turn=turn,
            message=message,
            assistant=assistant,
            user_status=user_status,
            outcome=outcome,
            error_code=error.code if error else "",
            error_detail=error.detail if error else "",
            first_token_ms=first_token_ms,
            tool_rows=tool_rows,
            call_rows=call_rows,
        )
        turn.status = outcome
        return
    now = timezone.now()
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(status=user_status)
        if assistant is not None:
            assistant.save(
                update_fields=[
                    "content",
                    "status",
                    "tool_calls",
                    "input_tokens",
                    "output_tokens",
                    "latency_ms",
                    "error_code",
                    "updated_at",
                ]
            )
        Message.objects.bulk_create(
            [
                Message(
                    tenant_id=turn.tenant_id,
                    conversation_id=turn.conversation_id,
                    turn=turn,
                    role=Message.Role.TOOL,
                    trace_id=turn.trace_id,
                    **row,
                )
                for row in tool_rows
            ]
        )
        LLMCall.objects.bulk_create([_llm_call_row(turn, c) for c in calls])
        Turn.objects.filter(pk=turn.pk).update(
            status=outcome,
            finished_at=now,
            first_token_ms=first_token_ms,
            error_code=error.code if error else "",
            error_detail=error.detail if error else "",
        )
    turn.status = outcome


def _tool_fields(r: dict[str, Any]) -> dict[str, Any]:
    """A tool call's Message row (role tool) fields, beyond tenant, conversation, turn and trace."""
    return {
        "status": Message.Status.DONE if r["ok"] else Message.Status.FAILED,
        "content": r["result"],
        "tool_call_id": r["id"][:100],
        "tool_name": r["name"][:100],
        "tool_calls": [{"name": r["name"], "arguments": r["arguments"]}],
        "latency_ms": r["duration_ms"],
        "error_code": r["error_code"],
    }


def _llm_call_fields(call) -> dict[str, Any]:
    """An LLMCall row's fields, beyond tenant, turn and trace."""
    return {
        "model": call.model[:100],
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "first_token_ms": call.first_token_ms,
        "latency_ms": call.latency_ms,
        "ok": call.ok,
        "error": call.error[:300],
    }


def _llm_call_row(turn: Turn, call) -> LLMCall:
    return LLMCall(tenant_id=turn.tenant_id, turn=turn, trace_id=turn.trace_id, **_llm_call_fields(call))
