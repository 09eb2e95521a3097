"""Read-side queries over transcripts."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Sum

from apps.transcripts.models import Conversation, Message, Turn

CHAT_MESSAGE_LIMIT = 500  # newest messages shown on a conversation page; older ones via the Message list

# Within a turn a reader expects the question, then the tools in the order they ran, then the answer.
# The runtime writes them in another order: the assistant row at turn start (so the card's feedback
# buttons can carry its id), the tool rows when the turn is saved, and a user message queued during an
# earlier turn has a smaller id than that turn's answer.
_STEP_RANK: dict[str, int] = {Message.Role.USER: 0, Message.Role.TOOL: 1, Message.Role.ASSISTANT: 2}
_OTHER_STEP = 3  # anything else attached to a turn (e.g. a system row) comes after its answer


@dataclass(frozen=True)
class ChatEntry:
    """One line of the chat: a turn header (``turn``) or a message bubble (``message``)."""

    kind: str  # "turn" | "message"
    turn: Turn | None = None
    message: Message | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # name/arguments of a message's tool calls


def conversation_chat(*, conversation: Conversation, limit: int = CHAT_MESSAGE_LIMIT) -> list[ChatEntry]:
    """The newest ``limit`` messages of a conversation in reading order, each turn preceded by a header.

    A turn's messages form one block placed at the turn's start: its user message(s), its tool rows by
    id (the order they ran), then its assistant message(s). Messages without a turn (ignored or pending
    ones, notices) are placed by their created_at among the turns. Two queries, whatever the size.
    """
    messages = list(
        Message.objects.for_tenant(conversation.tenant_id).filter(conversation=conversation).order_by("-id")[:limit]
    )
    turn_ids = {m.turn_id for m in messages if m.turn_id}
    turns = {
        t.pk: t
        for t in Turn.objects.for_tenant(conversation.tenant_id)
        .filter(pk__in=turn_ids)
        .annotate(input_tokens=Sum("llm_calls__input_tokens"), output_tokens=Sum("llm_calls__output_tokens"))
    }
    entries: list[ChatEntry] = []
    shown_turn = None
    for message in chat_order(messages, turns):
        if message.turn_id in turns and message.turn_id != shown_turn:
            shown_turn = message.turn_id
            entries.append(ChatEntry(kind="turn", turn=turns[message.turn_id]))
        entries.append(ChatEntry(kind="message", message=message, tool_calls=_tool_calls(message)))
    return entries


def chat_order(messages: list[Message], turns: dict[int, Turn]) -> list[Message]:
    """``messages`` in reading order (see conversation_chat); a message whose turn is not in ``turns``
    counts as one without a turn."""

    def key(m: Message) -> tuple[datetime.datetime, int, int, int]:
        turn = turns.get(m.turn_id) if m.turn_id else None
        if turn is None:
            return (m.created_at, 0, 0, m.pk)
        return (turn.started_at or turn.created_at, turn.pk, _STEP_RANK.get(m.role, _OTHER_STEP), m.pk)

    return sorted(messages, key=key)


def _tool_calls(message: Message) -> list[dict[str, Any]]:
    # OpenAI-style {"function": {"name", "arguments"}} or the runtime's flat {"name", "arguments"}.
    return [
        {
            "name": (call.get("function") or {}).get("name") or call.get("name", ""),
            "arguments": (call.get("function") or {}).get("arguments") or call.get("arguments", ""),
        }
        for call in (message.tool_calls or [])
        if isinstance(call, dict)
    ]
