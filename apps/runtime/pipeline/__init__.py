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

from apps.runtime.pipeline.parts import TurnDone, db_release
from apps.runtime.pipeline.turn import message_process, notice_send

__all__ = ["TurnDone", "db_release", "message_process", "notice_send"]
