"""Chat commands, answered without the LLM: /stop, /reset, /help.

Commands queue like any message (so /reset after a question applies after its answer), except
/stop: a runner that finds the conversation busy claims pending /stop messages at once
(``stop_commands_take``) and cancels the running turn, which then ends and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from django.db import transaction
from django.utils import timezone

from apps.transcripts.models import Conversation, Message, Turn

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Command:
    name: str
    help: str


COMMANDS = {
    "stop": Command("stop", "停止正在生成的回答"),
    "reset": Command("reset", "清空上下文，开始新的对话"),
    "help": Command("help", "查看可用命令"),
}
ALIASES = {"停止": "stop", "重置": "reset", "new": "reset", "帮助": "help", "clear": "reset"}

STOPPED_TEXT = "⏹ 已停止回答"
NOTHING_TO_STOP_TEXT = "当前没有正在进行的回答。"
RESET_TEXT = "🔄 已开始新的对话，之前的上下文已清空。"


def command_parse(text: str) -> str | None:
    """The command a message is (``stop``, ``reset``, ``help``), or None for a normal message."""
    word = (text or "").strip().split(maxsplit=1)
    if not word or not word[0].startswith("/"):
        return None
    name = word[0][1:].lower()
    name = ALIASES.get(name, name)
    return name if name in COMMANDS else None


def help_text() -> str:
    lines = ["**可用命令**"] + [f"- `/{c.name}`：{c.help}" for c in COMMANDS.values()]
    lines.append("\n直接发送文字即可与智能体对话。")
    return "\n".join(lines)


def turn_cancel(*, turn: Turn) -> bool:
    """Ask a queued or running turn to stop; it ends within about a second and says so.

    Returns False if the turn had already finished. Safe to call from any process.
    """
    from apps.runtime.watch import watchdog

    updated = Turn.objects.filter(pk=turn.pk, status__in=[Turn.Status.QUEUED, Turn.Status.RUNNING]).update(
        cancel_requested=True
    )
    if updated:
        active = watchdog.find(turn.pk)
        if active is not None:  # running in this process: no need to wait for the poll
            active.cancel()
        logger.info("turn.cancel_requested", turn_id=turn.pk)
    return bool(updated)


def conversation_reset(*, conversation: Conversation, at=None) -> None:
    """Start a new session: messages before ``at`` (default now) and the summary are not replayed."""
    from apps.runtime.memory import session_start

    session_start(conversation=conversation, at=at or timezone.now())


def command_run(*, name: str, message: Message, notify: Callable[[str], None]) -> None:
    """Run a queued command (the runner holds the conversation); ``notify`` shows the reply."""
    conversation = message.conversation
    if name == "reset":
        # From the command's own time: messages queued behind /reset belong to the new session.
        conversation_reset(conversation=conversation, at=message.created_at)
        notify(RESET_TEXT)
    elif name == "help":
        notify(help_text())
    elif name == "stop":
        # Reached in queue order: nothing of this conversation is running any more.
        notify(NOTHING_TO_STOP_TEXT)


def stop_commands_take(*, conversation_id: int) -> list[tuple[Message, bool, int]]:
    """Claim pending /stop messages of a busy conversation and cancel what runs.

    Returns (message, whether a running turn was cancelled, how many queued messages were dropped).
    Claiming is a compare-and-swap on the message status, so each /stop is handled once even when
    the runner reaches it at the same time.
    """
    taken = []
    pending = Message.objects.filter(
        conversation_id=conversation_id, role=Message.Role.USER, status=Message.Status.PENDING
    ).order_by("id")
    for message in pending:
        if command_parse(message.content) != "stop":
            continue
        with transaction.atomic():
            if not Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
                status=Message.Status.DONE
            ):
                continue
            # Messages queued before /stop are dropped with the running answer: the user asked to stop.
            dropped = Message.objects.filter(
                conversation_id=conversation_id,
                role=Message.Role.USER,
                status=Message.Status.PENDING,
                id__lt=message.pk,
            ).update(status=Message.Status.CANCELLED)
        # First a turn whose message is claimed but whose rows are not written yet (its LLM request
        # is leaving, store.TurnRows): marked here, the turn starts cancelled. Then the running turns
        # (in this order: a turn written meanwhile is found by the second look).
        stopped = _unopened_turns_stop(conversation_id=conversation_id)
        for turn in Turn.objects.filter(conversation_id=conversation_id, status=Turn.Status.RUNNING):
            stopped = turn_cancel(turn=turn) or stopped
        logger.info("command.stop", message_id=message.pk, stopped_turn=stopped, dropped=dropped)
        taken.append((message, stopped, dropped))
    return taken


def _unopened_turns_stop(*, conversation_id: int) -> bool:
    claimed = Message.objects.filter(
        conversation_id=conversation_id, role=Message.Role.USER, status=Message.Status.PROCESSING, turn__isnull=True
    ).values_list("pk", "content")
    ids = [pk for pk, content in claimed if not command_parse(content)]  # a claimed command is no turn
    return bool(
        ids
        and Message.objects.filter(pk__in=ids, status=Message.Status.PROCESSING, turn__isnull=True).update(
            status=Message.Status.CANCELLED
        )
    )
