"""Reads for bindings: which agent answers a given chat."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from django.db.models import Q

from apps.bindings.models import Binding
from apps.bots.models import Bot


class _BindingLike(Protocol):
    @property
    def pk(self) -> int: ...
    @property
    def chat_type(self) -> str: ...
    @property
    def chat_id(self) -> str: ...
    @property
    def user_open_id(self) -> str: ...
    @property
    def priority(self) -> int: ...


B = TypeVar("B", bound=_BindingLike)


def binding_pick(candidates: Iterable[B], *, chat_type: str, chat_id: str, user_open_id: str) -> B | None:
    """The routing rules, in one place: among bindings that match this chat, the most specific wins
    (this user > this chat > this chat type > "any"), then higher priority, then the oldest.

    Works on Binding rows and on the ingress's cached copies alike, so every caller ranks the same way.
    """
    best, best_rank = None, None
    for b in candidates:
        if (b.user_open_id and b.user_open_id != user_open_id) or (b.chat_id and b.chat_id != chat_id):
            continue
        if b.chat_type not in (chat_type, Binding.ChatType.ANY):
            continue
        # Weights are powers of two so a single more specific rung outranks any mix of weaker ones.
        specificity = 4 * bool(b.user_open_id) + 2 * bool(b.chat_id) + (b.chat_type != Binding.ChatType.ANY)
        rank = (-specificity, -b.priority, b.pk)
        if best_rank is None or rank < best_rank:
            best, best_rank = b, rank
    return best


def binding_resolve(*, bot: Bot, chat_type: str, chat_id: str, user_open_id: str) -> Binding | None:
    """The binding that routes this chat (rules in binding_pick); only enabled bindings whose agent is
    active take part. One query with the agent; ranking the few candidates in Python is cheaper than
    compiling a CASE/ORDER BY for it (that compilation was the largest single cost of a turn)."""
    user_match = Q(user_open_id="")
    if user_open_id:
        user_match |= Q(user_open_id=user_open_id)
    chat_match = Q(chat_id="")
    if chat_id:
        chat_match |= Q(chat_id=chat_id)
    candidates = (
        Binding.objects.for_tenant(bot.tenant_id)
        .filter(bot=bot, is_enabled=True, agent__is_active=True)
        .filter(user_match, chat_match, chat_type__in=[chat_type, Binding.ChatType.ANY])
        .select_related("agent")
    )
    return binding_pick(candidates, chat_type=chat_type, chat_id=chat_id, user_open_id=user_open_id)
