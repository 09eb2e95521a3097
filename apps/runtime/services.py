"""Agent runtime services (the public surface other apps call).

- ``conversation_process``: answer a conversation's pending messages (called by the task runner).
- ``turn_cancel``: stop a running turn (the API; /stop in a chat does the same).
- ``conversation_reset``: start a fresh session (/reset).
- ``conversations_sweep``: re-enqueue conversations with unanswered messages and no live runner.
- ``stop_commands_handle``: act on a pending /stop at once (optional fast path for entry points).
- ``periodic_tasks_sync``: declare this app's beat schedules in django-celery-beat.
"""

from __future__ import annotations

from apps.runtime.commands import conversation_reset, turn_cancel
from apps.runtime.runner import conversation_process, conversations_sweep, stop_commands_handle
from apps.runtime.schedules import periodic_tasks_sync

__all__ = [
    "conversation_process",
    "conversation_reset",
    "conversations_sweep",
    "periodic_tasks_sync",
    "stop_commands_handle",
    "turn_cancel",
]
