"""The turn: RESTORE → BUILD → RUN → SAVE → RESPOND, each timed into Turn.timings (ms).

``message_process`` answers one claimed user message (the runner in runner.py guarantees one at a
time per conversation, in arrival order). Commands are answered without the LLM.

Database connections: the turn closes its connection (returning it to the psycopg pool) before
waiting on the LLM and after every responder event or tool call, so hundreds of turns in flight
share a small pool. Everything the turn writes is saved at once in SAVE (one statement on
PostgreSQL, apps.runtime.store; one transaction on the ORM path); the assistant Message row exists
from the start so a streamed card can carry its id on feedback buttons.

Tenant, bot, agent and bindings come from a per-process cache (apps.runtime.cache, 5 s): an
admin's edit made in another process reaches turns within that delay.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import structlog
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from apps.runtime import store
from apps.runtime.cache import agent_cached, binding_resolve_cached, bot_cached, tenant_cached
from apps.runtime.commands import command_parse, command_run
from apps.runtime.errors import TurnCancelled, TurnError, user_message
from apps.runtime.llm import LLMSession, parse_arguments, tool_calls_message
from apps.runtime.memory import (
    Round,
    history_rounds,
    memory_compact,
    memory_fold,
    memory_select,
    session_due,
    session_refresh,
)
from apps.runtime.responders.base import Responder, ResponderContext, responder_for
from apps.runtime.tools import ToolContext, tool_run, tool_schemas, tools_for_agent
from apps.transcripts.models import Conversation, LLMCall, Message, Turn

if TYPE_CHECKING:
    from apps.agents.models import Agent
    from apps.bindings.models import Binding
    from apps.runtime.watch import ActiveTurn

logger = structlog.get_logger(__name__)

WEEKDAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
EMPTY_ANSWER = "抱歉，这次没有得到回答，请换个说法再试。"


def db_release(conn=None) -> None:
    """Give this thread's connection back to the pool (not inside a transaction: tests, callers).

    ``conn``: this thread's ``connections[DEFAULT_DB_ALIAS]`` if the caller holds it (the
    ``connection`` proxy looks the thread's wrapper up on every attribute access).
    """
    conn = conn or connections[DEFAULT_DB_ALIAS]
    if conn.connection is not None and not conn.in_atomic_block:
        conn.close()


class Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0) + int((time.monotonic() - started) * 1000)


class GuardedResponder:
    """Calls the channel's responder; a delivery failure is logged, never ends the turn.

    The wrappers are built once per turn (not per call: on_text_delta runs once per streamed chunk).
    """

    EVENTS = ("on_start", "on_text_delta", "on_tool_start", "on_tool_end", "on_final", "on_error",
              "on_cancelled", "on_notice", "close")  # fmt: skip

    def __init__(self, inner: Responder) -> None:
        self.inner = inner
        conn = connections[DEFAULT_DB_ALIAS]  # this thread's: a responder lives in its turn's thread
        for name in self.EVENTS:
            setattr(self, name, self._guard(name, getattr(inner, name), conn))

    def _guard(self, name: str, method, conn):
        def call(*args: Any) -> None:
            try:
                method(*args)
            except Exception:
                logger.exception("responder.failed", responder_event=name, responder=type(self.inner).__name__)
            finally:
                db_release(conn)

        return call

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@dataclass
class TurnState:
    """What the turn produced so far (kept even when it is cancelled or fails half-way)."""

    visible: str = ""  # the answer text shown so far, across tool rounds
    first_token_at: float | None = None
    tool_records: list[dict[str, Any]] = field(default_factory=list)
    llm: LLMSession | None = None
    # BUILD's history when it folded nothing: every unfolded round of the session (lets the
    # post-answer compaction decide without reading the history again). None: unknown.
    history: list[Round] | None = None
    # Known before BUILD: the session has no earlier rounds to replay (saves reading the history).
    history_empty: bool = False


@dataclass
class TurnDone:
    """A finished turn's stage timings, for the runner to write with its next statement."""

    turn_id: int
    timings: dict[str, int]
    duration_ms: int


def conversation_rows_attach(conversation: Conversation) -> Conversation:
    """Attach the tenant, bot and agent from the per-process cache (apps.runtime.cache), so reading
    them costs no query."""
    conversation.tenant = tenant_cached(conversation.tenant_id)
    if conversation.bot_id:
        bot = bot_cached(conversation.bot_id)
        if bot is not None:
            conversation.bot = bot
    if conversation.agent_id:
        agent = agent_cached(conversation.agent_id)
        if agent is not None:
            conversation.agent = agent
    return conversation


def message_process(*, message: Message | int, active: ActiveTurn, defer_timings: bool = False) -> TurnDone | None:
    """Answer one user message that the runner has claimed (status processing).

    ``message``: the claimed row with its ``conversation`` (apps.runtime.store.claim), or its id.
    ``defer_timings``: return the turn's timings instead of writing them (the runner writes them with
    its next statement).
    """
    if isinstance(message, int):
        message = Message.objects.select_related("conversation").get(pk=message)
    conversation_rows_attach(message.conversation)
    trace_id = message.trace_id or uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(
        trace_id=trace_id, conversation_id=message.conversation_id, message_id=message.pk
    )
    try:
        name = command_parse(message.content)
        if name:
            command_answer(message=message, name=name, trace_id=trace_id)
            return None
        return turn_run(message=message, active=active, trace_id=trace_id, defer_timings=defer_timings)
    finally:
        structlog.contextvars.unbind_contextvars("trace_id", "conversation_id", "message_id", "turn_id")


def notice_send(*, message: Message, text: str, trace_id: str) -> None:
    """Reply to ``message`` with a system notice and keep it in the transcript."""
    Message.objects.create(
        tenant_id=message.tenant_id,
        conversation_id=message.conversation_id,
        role=Message.Role.SYSTEM,
        content=text,
        trace_id=trace_id,
        bot_id=message.bot_id,
    )
    ctx = ResponderContext(conversation=message.conversation, turn=None, user_messages=[message], trace_id=trace_id)
    responder = GuardedResponder(responder_for(ctx))
    responder.on_notice(text)
    responder.close()


def command_answer(*, message: Message, name: str, trace_id: str) -> None:
    logger.info("command.run", command=name)
    command_run(
        name=name, message=message, notify=lambda text: notice_send(message=message, text=text, trace_id=trace_id)
    )
    Message.objects.filter(pk=message.pk).update(status=Message.Status.DONE, trace_id=trace_id)


def turn_run(*, message: Message, active: ActiveTurn, trace_id: str, defer_timings: bool = False) -> TurnDone:
    clock = Stopwatch()
    started = time.monotonic()
    conversation = message.conversation
    state = TurnState()
    responder: GuardedResponder | None = None
    assistant: Message | None = None
    outcome, error = Turn.Status.SUCCEEDED, None
    with clock.stage("restore"):
        try:
            agent, binding = turn_restore(conversation=conversation, message=message)
        except TurnError as exc:
            agent, binding, restore_error = None, None, exc
        else:
            restore_error = None
        if store.fast():
            session_at = session_due(conversation=conversation, agent=agent, message=message) if agent else None
            turn, assistant = store.turn_open(
                conversation=conversation,
                message=message,
                agent_id=agent.pk if agent else None,
                trace_id=trace_id,
                with_assistant=restore_error is None,
                session_at=session_at,
            )
            # Nothing to replay: no earlier message at all, or a session that starts with this one.
            state.history_empty = message.previous_at is None or session_at == message.created_at
        else:
            turn = Turn.objects.create(
                tenant_id=conversation.tenant_id,
                conversation=conversation,
                agent=agent,
                status=Turn.Status.RUNNING,
                trace_id=trace_id,
                started_at=timezone.now(),
            )
            Message.objects.filter(pk=message.pk).update(turn=turn, trace_id=trace_id)
        active.turn_id = turn.pk
        structlog.contextvars.bind_contextvars(turn_id=turn.pk)
    ctx = ResponderContext(conversation=conversation, turn=turn, user_messages=[message], trace_id=trace_id)
    logger.info("turn.start")
    try:
        with clock.stage("restore"):
            if restore_error is not None:
                raise restore_error
            if assistant is None:
                session_refresh(conversation=conversation, agent=agent, message=message)
                assistant = Message.objects.create(
                    tenant_id=conversation.tenant_id,
                    conversation=conversation,
                    turn=turn,
                    role=Message.Role.ASSISTANT,
                    status=Message.Status.PROCESSING,
                    trace_id=trace_id,
                    bot_id=conversation.bot_id,
                )
            ctx.assistant_message_id = assistant.pk
        db_release()
        responder = GuardedResponder(responder_for(ctx))
        responder.on_start()
        if active.cancelled.is_set():
            raise TurnCancelled()
        with clock.stage("build"):
            tools = tools_for_agent(agent)
            state.llm = LLMSession(agent=agent, active=active, trace_id=trace_id)  # no DB connection held
            chat = turn_build(
                conversation=conversation,
                turn=turn,
                agent=agent,
                binding=binding,
                message=message,
                tools=tools,
                llm=state.llm,
                state=state,
            )
        db_release()  # nothing holds a connection while the model thinks
        with clock.stage("run"):
            turn_llm_loop(
                agent=agent,
                chat=chat,
                tools=tools,
                state=state,
                responder=responder,
                active=active,
                started=started,
                tool_ctx=ToolContext(
                    tenant=conversation.tenant,
                    agent=agent,
                    conversation=conversation,
                    user_open_id=message.sender_open_id or conversation.user_open_id,
                    trace_id=trace_id,
                ),
            )
    except TurnCancelled:
        outcome = Turn.Status.CANCELLED
        logger.info("turn.cancelled")
    except TurnError as exc:
        outcome, error = Turn.Status.FAILED, exc
        logger.warning("turn.failed", code=exc.code, detail=exc.detail)
    except Exception as exc:
        logger.exception("turn.crashed")
        outcome, error = (
            Turn.Status.FAILED,
            TurnError("AGENT_003", f"internal error: {type(exc).__name__}: {exc}"[:500]),
        )

    answer = state.visible if outcome != Turn.Status.SUCCEEDED else (state.visible or EMPTY_ANSWER)
    try:
        with clock.stage("save"):
            turn_save(
                turn=turn,
                message=message,
                assistant=assistant,
                state=state,
                outcome=outcome,
                error=error,
                answer=answer,
                started=started,
            )
    except Exception:
        # The transcript could not be written (database gone): tell the user, free the message's
        # reaction, and let the runner fail; the sweep re-runs the message once the DB is back.
        logger.exception("turn.save_failed")
        failed = responder or GuardedResponder(responder_for(ctx))
        failed.on_error("AGENT_003", user_message("AGENT_003"))
        failed.close()
        raise
    with clock.stage("respond"):
        if responder is None:
            responder = GuardedResponder(responder_for(ctx))
        if outcome == Turn.Status.SUCCEEDED:
            responder.on_final(answer)
        elif outcome == Turn.Status.CANCELLED:
            responder.on_cancelled()
        else:
            responder.on_error(error.code, error.user_text)
        responder.close()
    duration_ms = int((time.monotonic() - started) * 1000)
    if outcome == Turn.Status.SUCCEEDED and state.llm is not None:
        turn_memory_compact(
            turn=turn,
            conversation=conversation,
            agent=agent,
            llm=state.llm,
            clock=clock,
            rounds=_rounds_after(state.history, message=message, answer=answer),
        )
    turn.timings = clock.timings
    if not defer_timings:
        Turn.objects.filter(pk=turn.pk).update(timings=clock.timings, duration_ms=duration_ms)
    logger.info("turn.end", status=outcome, timings=clock.timings)
    return TurnDone(turn_id=turn.pk, timings=clock.timings, duration_ms=duration_ms)


def _rounds_after(history: list[Round] | None, *, message: Message, answer: str) -> list[Round] | None:
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
    ``rounds``: the session's rounds as known in memory (see _rounds_after); when they all fit, the
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


# -- stages ------------------------------------------------------------------------------------
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


# Text chunks processed closer together than this reach the responder as one update (the last).
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
            completion = state.llm.chat(messages=chat, tools=offer, on_text=on_text)
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
    user_status = {
        Turn.Status.SUCCEEDED: Message.Status.DONE,
        Turn.Status.CANCELLED: Message.Status.CANCELLED,
    }.get(outcome, Message.Status.FAILED)
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
