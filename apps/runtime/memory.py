"""Short-term memory: the recent rounds of the current session, within a token budget.

A round is one succeeded turn: its user message and the assistant's answer (tool traffic is not
replayed; the answer carries what the tools found). The session restarts after /reset or when the
previous message is older than ``agent.memory_idle_minutes``. The last ``agent.memory_rounds``
rounds that fit ``agent.memory_token_budget`` are replayed; older rounds of the session are folded
into ``conversation.summary`` by one LLM call, so nothing is cut silently. The fold runs right after
a turn has answered (off the user's critical path); BUILD folds too if anything is left over.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from apps.runtime import store
from apps.transcripts.models import Conversation, Message, Turn

if TYPE_CHECKING:
    from apps.agents.models import Agent
    from apps.runtime.llm import LLMSession

logger = structlog.get_logger(__name__)

_WIDE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")

SUMMARY_PROMPT = (
    "你是对话摘要助手。请把【已有摘要】和【新增对话】合并成一段简洁的中文摘要，"
    "保留用户的目标、偏好、已确认的事实、数字和结论，省略寒暄。不超过 300 字，只输出摘要本身。"
)


def estimate_tokens(text: str) -> int:
    """Cheap token estimate: one per CJK character, one per four other characters."""
    if not text:
        return 0
    wide = len(_WIDE.findall(text))
    return wide + (len(text) - wide + 3) // 4


@dataclass
class Round:
    messages: list[Message] = field(default_factory=list)

    @property
    def user_id(self) -> int:
        return self.messages[0].pk

    @property
    def tokens(self) -> int:
        return sum(estimate_tokens(m.content) + 4 for m in self.messages)

    def as_chat(self) -> list[dict[str, Any]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


_UNKNOWN = object()


def session_due(*, conversation: Conversation, agent: Agent, message: Message) -> datetime | None:
    """Where a new session starts if this message needs one (the first message, or the previous one
    is older than the idle TTL), else None. ``message.previous_at`` (the created_at of the message
    before it, set by the runner's claim) saves the query."""
    previous: Any = getattr(message, "previous_at", _UNKNOWN)
    if previous is _UNKNOWN:
        previous = (
            Message.objects.filter(
                conversation=conversation, id__lt=message.pk, role__in=[Message.Role.USER, Message.Role.ASSISTANT]
            )
            .order_by("-id")
            .values_list("created_at", flat=True)
            .first()
        )
    idle = timedelta(minutes=agent.memory_idle_minutes)
    stale = previous is not None and message.created_at - previous > idle
    if conversation.session_started_at is not None and not stale:
        return None
    if stale:
        logger.info("memory.session_expired", idle_minutes=agent.memory_idle_minutes)
    return message.created_at if stale else conversation.created_at


def session_refresh(*, conversation: Conversation, agent: Agent, message: Message) -> bool:
    """Start a new session if this is the first message or the previous one is older than the idle TTL."""
    at = session_due(conversation=conversation, agent=agent, message=message)
    if at is None:
        return False
    session_start(conversation=conversation, at=at)
    return True


def session_start(*, conversation: Conversation, at=None) -> None:
    """Forget the history before ``at`` (now by default): a new session with an empty summary."""
    conversation.session_started_at = at or timezone.now()
    conversation.summary = ""
    conversation.summary_upto_id = None
    Conversation.objects.filter(pk=conversation.pk).update(
        session_started_at=conversation.session_started_at, summary="", summary_upto_id=None
    )


def history_rounds(*, conversation: Conversation, before_turn_id: int, limit: int = 50) -> list[Round]:
    """Succeeded rounds of the current session not folded into the summary, oldest first.

    Rounds are ordered by turn, not by message id: a message queued during a turn has a smaller id
    than that turn's answer. A round is folded when its user message id <= summary_upto_id.
    """
    turn_ids = (
        Turn.objects.filter(conversation=conversation, status=Turn.Status.SUCCEEDED, id__lt=before_turn_id)
        .order_by("-id")
        .values("pk")[:limit]
    )
    messages: Iterable[Message]
    if store.fast():
        messages = _history_messages_pg(conversation_id=conversation.pk, before_turn_id=before_turn_id, limit=limit)
    else:  # one query too: the turn ids are a subquery
        messages = (
            Message.objects.filter(turn_id__in=turn_ids, role__in=[Message.Role.USER, Message.Role.ASSISTANT])
            .only("id", "role", "content", "turn_id", "created_at")
            .order_by("id")
        )
    by_turn: dict[int, list[Message]] = {}
    for message in messages:
        if message.turn_id is not None:  # always, for a succeeded turn's messages
            by_turn.setdefault(message.turn_id, []).append(message)
    rounds = []
    for turn_id in sorted(by_turn):
        items = sorted(by_turn[turn_id], key=lambda m: m.role != Message.Role.USER)  # user first
        user = items[0]
        if user.role != Message.Role.USER or not all(m.content for m in items):
            continue
        if conversation.session_started_at is not None and user.created_at < conversation.session_started_at:
            continue
        if conversation.summary_upto_id and user.pk <= conversation.summary_upto_id:
            continue
        rounds.append(Round(messages=items))
    return rounds


# In the model's field order: Model.from_db assigns a partial row's values in that order.
_HISTORY_FIELDS = ["id", "created_at", "turn_id", "role", "content"]
_HISTORY_SQL = """
SELECT m.id, m.created_at, m.turn_id, m.role, m.content FROM transcripts_message m
WHERE m.turn_id IN (
    SELECT t.id FROM transcripts_turn t
    WHERE t.conversation_id = %s AND t.status = 'succeeded' AND t.id < %s ORDER BY t.id DESC LIMIT %s
) AND m.role IN ('user', 'assistant')
ORDER BY m.id
"""


def _history_messages_pg(*, conversation_id: int, before_turn_id: int, limit: int) -> list[Message]:
    # Hand-written: the ORM's compilation of this query cost more CPU than PostgreSQL's answer.
    rows = store.fetch_all(_HISTORY_SQL, (conversation_id, before_turn_id, limit))
    return [Message.from_db(DEFAULT_DB_ALIAS, _HISTORY_FIELDS, row) for row in rows]


def memory_select(*, rounds: list[Round], agent: Agent, summary: str) -> tuple[list[Round], list[Round]]:
    """Split rounds into (to fold, to keep): keep the newest that fit the round and token limits."""
    budget = agent.memory_token_budget - estimate_tokens(summary)
    keep: list[Round] = []
    used = 0
    for round_ in reversed(rounds):
        if len(keep) >= agent.memory_rounds or used + round_.tokens > budget:
            break
        keep.append(round_)
        used += round_.tokens
    keep.reverse()
    return rounds[: len(rounds) - len(keep)], keep


def memory_fold(*, conversation: Conversation, rounds: list[Round], llm: LLMSession) -> bool:
    """Fold ``rounds`` into the conversation summary with one LLM call; False (and logged) on failure."""
    from apps.runtime.errors import TurnCancelled, TurnError

    lines = []
    for round_ in rounds:
        for m in round_.messages:
            who = "用户" if m.role == Message.Role.USER else "助手"
            lines.append(f"{who}：{m.content}")
    prompt = f"【已有摘要】\n{conversation.summary or '（无）'}\n\n【新增对话】\n" + "\n".join(lines)
    try:
        completion = llm.chat(
            messages=[{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": prompt}],
            stream=False,
            max_tokens=600,
        )
    except TurnCancelled:
        raise
    except TurnError as exc:
        # Not silent: the older rounds stay unfolded and are tried again next turn.
        logger.warning("memory.fold_failed", code=exc.code, detail=exc.detail, rounds=len(rounds))
        return False
    summary = completion.text.strip()
    if not summary:
        logger.warning("memory.fold_empty", rounds=len(rounds))
        return False
    conversation.summary = summary
    conversation.summary_upto_id = rounds[-1].user_id
    Conversation.objects.filter(pk=conversation.pk).update(
        summary=summary, summary_upto_id=conversation.summary_upto_id
    )
    logger.info("memory.folded", rounds=len(rounds), summary_tokens=estimate_tokens(summary))
    return True


def memory_compact(*, conversation: Conversation, agent: Agent, llm: LLMSession, through_turn_id: int) -> bool:
    """Fold the rounds up to and including ``through_turn_id`` that the next turn could not replay."""
    rounds = history_rounds(conversation=conversation, before_turn_id=through_turn_id + 1)
    fold, _ = memory_select(rounds=rounds, agent=agent, summary=conversation.summary)
    if not fold:
        return False
    return memory_fold(conversation=conversation, rounds=fold, llm=llm)
