"""Per-process, short-lived copies of the rows every turn reads: tenant, bot, agent, a bot's bindings.

A turn used to read them (joined to the message, plus a binding query) on every message, ~12% of a
turn's worker CPU. They change rarely, so each worker process keeps them for ``TTL_SECONDS`` — the
same trade-off as the ingress's bot and binding caches (apps.feishu.views / ingest): an admin's edit
made in another process reaches turns within that delay. A save or delete of any of these models in
this process (admin in the embedded default, provisioning, tests) clears the cache at once.

The cached instances are shared between the turn threads of the process: treat them as read-only.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from django.db.models.signals import post_delete, post_save

from apps.bindings.selectors import binding_pick

if TYPE_CHECKING:
    from apps.agents.models import Agent
    from apps.bindings.models import Binding
    from apps.bots.models import Bot
    from apps.tenants.models import Tenant

TTL_SECONDS = 5.0

_lock = threading.Lock()
_entries: dict[tuple[str, int], tuple[float, Any]] = {}


def _get(kind: str, pk: int, load):
    now = time.monotonic()
    hit = _entries.get((kind, pk))
    if hit is not None and hit[0] > now:
        return hit[1]
    value = load()
    if TTL_SECONDS > 0:
        with _lock:
            _entries[(kind, pk)] = (now + TTL_SECONDS, value)
    return value


def cache_clear(**_: object) -> None:
    with _lock:
        _entries.clear()


def tenant_cached(tenant_id: int) -> Tenant:
    from apps.tenants.models import Tenant

    return _get("tenant", tenant_id, lambda: Tenant.objects.get(pk=tenant_id))


def bot_cached(bot_id: int) -> Bot | None:
    from apps.bots.models import Bot

    return _get("bot", bot_id, lambda: Bot.objects.filter(pk=bot_id).first())


def agent_cached(agent_id: int) -> Agent | None:
    from apps.agents.models import Agent

    return _get("agent", agent_id, lambda: Agent.objects.filter(pk=agent_id).first())


def _bot_bindings(bot: Bot) -> list[Binding]:
    from apps.bindings.models import Binding

    def load() -> list[Binding]:
        rows = list(
            Binding.objects.for_tenant(bot.tenant_id)
            .filter(bot_id=bot.pk, is_enabled=True, agent__is_active=True)
            .select_related("agent")
        )
        # Share the agent instances with agent_cached so a turn sees one copy of each agent.
        for row in rows:
            row.agent = _get("agent", row.agent_id, lambda row=row: row.agent)
        return rows

    return _get("bindings", bot.pk, load)


def binding_resolve_cached(*, bot: Bot, chat_type: str, chat_id: str, user_open_id: str) -> Binding | None:
    """apps.bindings.selectors.binding_resolve over the bot's cached enabled bindings (same rules)."""
    return binding_pick(_bot_bindings(bot), chat_type=chat_type, chat_id=chat_id, user_open_id=user_open_id)


def _connect() -> None:
    from apps.agents.models import Agent
    from apps.bindings.models import Binding
    from apps.bots.models import Bot
    from apps.tenants.models import Tenant

    for model in (Tenant, Bot, Agent, Binding):
        post_save.connect(cache_clear, sender=model, dispatch_uid=f"runtime-cache-{model.__name__}-save")
        post_delete.connect(cache_clear, sender=model, dispatch_uid=f"runtime-cache-{model.__name__}-delete")


_connect()
