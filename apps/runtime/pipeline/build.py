"""RESTORE and BUILD: the agent that answers, and what the model reads (prompt layers, memory, the message)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from django.utils import timezone

from apps.runtime.cache import binding_resolve_cached
from apps.runtime.errors import TurnError
from apps.runtime.llm import LLMSession
from apps.runtime.memory import history_rounds, memory_fold, memory_select
from apps.runtime.pipeline.parts import TurnState, db_release
from apps.transcripts.models import Conversation, Message, Turn

if TYPE_CHECKING:
    from apps.agents.models import Agent
    from apps.bindings.models import Binding


WEEKDAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]


def turn_restore(*, conversation: Conversation, message: Message) -> tuple[Agent, Binding | None]:
    """The agent that answers: the bot's binding for this chat (resolved per message from the
    per-process cache, so an admin's change applies within apps.runtime.cache.TTL_SECONDS), else
    the conversation's own agent."""
    binding = None
    agent = conversation.agent
    if conversation.bot_id and conversation.bot is not None:
        binding = binding_resolve_cached(
            bot=conversation.bot,
            chat_type=conversation.chat_type,
            chat_id=conversation.chat_id,
            user_open_id=conversation.user_open_id or message.sender_open_id,
        )
        if binding is not None:
            agent = binding.agent
    if agent is None or not agent.is_active:
        raise TurnError("AGENT_004", "no active agent for this conversation")
    return agent, binding


def system_prompt(*, conversation: Conversation, agent: Agent, binding: Binding | None, tools: list, now=None) -> str:
    """Prompt layers, most general first: identity, agent prompt, tenant, binding, time, memory, tools."""
    tenant = conversation.tenant
    identity = f"你是「{agent.name or agent.slug}」"
    identity += f"：{agent.description.strip()}" if agent.description.strip() else "。"
    parts = [identity]
    if agent.system_prompt.strip():
        parts.append(agent.system_prompt.strip())
    if tenant.instructions.strip():
        parts.append(f"## 组织要求\n{tenant.instructions.strip()}")
    if binding is not None and binding.instructions.strip():
        parts.append(f"## 本会话要求\n{binding.instructions.strip()}")
    zone = ZoneInfo(str(tenant.time_zone))
    local = (now or timezone.now()).astimezone(zone)
    parts.append(f"## 当前时间\n{local:%Y-%m-%d %H:%M} {WEEKDAYS[local.weekday()]}（{zone.key}）")
    if conversation.summary:
        parts.append(f"## 之前对话的摘要\n{conversation.summary}")
    if tools:
        parts.append("## 可用工具\n" + "\n".join(f"- `{t.name}`：{t.description}" for t in tools))
    return "\n\n".join(parts)


def turn_build(
    *,
    conversation: Conversation,
    turn: Turn,
    agent: Agent,
    binding: Binding | None,
    message: Message,
    tools: list,
    llm: LLMSession,
    state: TurnState | None = None,
) -> list[dict[str, Any]]:
    if state is not None and state.history_empty:
        rounds = []
    else:
        rounds = history_rounds(conversation=conversation, before_turn_id=turn.pk)
    fold, keep = memory_select(rounds=rounds, agent=agent, summary=conversation.summary)
    if not fold and state is not None:
        state.history = rounds
    if fold:
        db_release()
        memory_fold(conversation=conversation, rounds=fold, llm=llm)
        # With a longer summary fewer rounds may fit; what does not fit now is folded next turn.
        _, keep = memory_select(rounds=keep, agent=agent, summary=conversation.summary)
    chat: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": system_prompt(conversation=conversation, agent=agent, binding=binding, tools=tools),
        }
    ]
    for round_ in keep:
        chat.extend(round_.as_chat())
    chat.append({"role": "user", "content": user_text(message)})
    return chat


ATTACHMENT_LABELS = {"image": "图片", "file": "文件", "audio": "语音", "media": "视频", "sticker": "表情"}


def user_text(message: Message) -> str:
    """What the model reads for a user message: its text plus a line per attachment."""
    lines = [message.content] if message.content.strip() else []
    for item in message.attachments or []:
        if isinstance(item, dict):
            label = ATTACHMENT_LABELS.get(item.get("type", ""), item.get("type") or "附件")
            lines.append(f"[{label}{'：' + item['name'] if item.get('name') else ''}]")
    return "\n".join(lines) or "（空消息）"
