"""One claimed message: a command, or a turn through RESTORE → BUILD → RUN → SAVE → RESPOND."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import structlog
from django.utils import timezone

from apps.runtime import store
from apps.runtime.cache import agent_cached, bot_cached, tenant_cached
from apps.runtime.commands import command_parse, command_run
from apps.runtime.errors import TurnCancelled, TurnError, user_message
from apps.runtime.llm import LLMSession
from apps.runtime.memory import session_due, session_refresh
from apps.runtime.pipeline.build import turn_build, turn_restore
from apps.runtime.pipeline.parts import EMPTY_ANSWER, GuardedResponder, Stopwatch, TurnDone, TurnState, db_release
from apps.runtime.pipeline.run import turn_llm_loop
from apps.runtime.pipeline.save import rounds_after, turn_memory_compact, turn_save
from apps.runtime.responders.base import ResponderContext, responder_for
from apps.runtime.tools import ToolContext, tools_for_agent
from apps.transcripts.models import Conversation, Message, Turn
from omniagent import gate

if TYPE_CHECKING:
    from apps.agents.models import Agent
    from apps.bindings.models import Binding
    from apps.runtime.watch import ActiveTurn

logger = structlog.get_logger(__name__)


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
    row = message if isinstance(message, Message) else Message.objects.select_related("conversation").get(pk=message)
    conversation_rows_attach(row.conversation)
    trace_id = row.trace_id or uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(trace_id=trace_id, conversation_id=row.conversation_id, message_id=row.pk)
    try:
        name = command_parse(row.content)
        if name:
            command_answer(message=row, name=name, trace_id=trace_id)
            return None
        return turn_run(message=row, active=active, trace_id=trace_id, defer_timings=defer_timings)
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


def _rows_write(rows: store.TurnRows, active: ActiveTurn) -> None:
    """The turn's opening rows, written while its LLM request is out (behind turns still answering:
    in a burst every request leaves before these writes). A /stop that came in between cancels now."""
    gate.wait_behind_answering()
    cancelled = rows.write()
    db_release()
    if cancelled:
        active.cancel()


def turn_run(*, message: Message, active: ActiveTurn, trace_id: str, defer_timings: bool = False) -> TurnDone:
    clock = Stopwatch()
    started = time.monotonic()
    gate.answering()
    conversation = message.conversation
    state = TurnState()
    responder: GuardedResponder | None = None
    assistant: Message | None = None
    outcome, error = Turn.Status.SUCCEEDED, None
    agent: Agent | None
    binding: Binding | None
    restore_error: TurnError | None
    with clock.stage("restore"):
        try:
            agent, binding = turn_restore(conversation=conversation, message=message)
        except TurnError as exc:
            agent, binding, restore_error = None, None, exc
        else:
            restore_error = None
        rows: store.TurnRows | None = None
        if store.fast():
            session_at = session_due(conversation=conversation, agent=agent, message=message) if agent else None
            rows = store.TurnRows(
                conversation=conversation,
                message=message,
                agent_id=agent.pk if agent else None,
                trace_id=trace_id,
                with_assistant=restore_error is None,
                session_at=session_at,
            )
            turn, assistant = rows.turn, rows.assistant
            # Nothing to replay: no earlier message at all, or a session that starts with this one.
            previous_at = message.previous_at  # type: ignore[attr-defined]  # set by store.claim
            state.history_empty = previous_at is None or session_at == message.created_at
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
            if Message.objects.filter(pk=message.pk, status=Message.Status.CANCELLED).exists():
                active.cancel()  # a /stop came between the claim and the Turn row (commands.stop_commands_take)
        active.turn_id = turn.pk
        structlog.contextvars.bind_contextvars(turn_id=turn.pk)
    ctx = ResponderContext(conversation=conversation, turn=turn, user_messages=[message], trace_id=trace_id)
    logger.info("turn.start")
    try:
        with clock.stage("restore"):
            if restore_error is not None:
                raise restore_error
            assert agent is not None  # turn_restore either found one or raised
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
            if rows is not None and not rows.written:
                state.llm.on_sent = lambda: _rows_write(rows, active)
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
            if rows is not None:
                rows.write()  # the turn ended before its LLM request left (an error, a /stop)
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
            assert error is not None  # a failed turn has its error
            responder.on_error(error.code, error.user_text)
        gate.answered()  # removing the reaction and the rest wait behind turns still answering
        responder.close()
    duration_ms = int((time.monotonic() - started) * 1000)
    if outcome == Turn.Status.SUCCEEDED and state.llm is not None and agent is not None:
        turn_memory_compact(
            turn=turn,
            conversation=conversation,
            agent=agent,
            llm=state.llm,
            clock=clock,
            rounds=rounds_after(state.history, message=message, answer=answer),
        )
    turn.timings = clock.timings
    if not defer_timings:
        Turn.objects.filter(pk=turn.pk).update(timings=clock.timings, duration_ms=duration_ms)
    logger.info("turn.end", status=outcome, timings=clock.timings)
    return TurnDone(turn_id=turn.pk, timings=clock.timings, duration_ms=duration_ms)
