"""Reads for bindings: which agent answers a given chat."""

from __future__ import annotations

from django.db.models import Case, IntegerField, Q, Value, When

from apps.bindings.models import Binding
from apps.bots.models import Bot


def _scope_rank(condition: Q, weight: int) -> Case:
    return Case(When(condition, then=Value(weight)), default=Value(0), output_field=IntegerField())


def binding_resolve(*, bot: Bot, chat_type: str, chat_id: str, user_open_id: str) -> Binding | None:
    """The binding that routes this chat: most specific first, then higher priority, then oldest.

    Specificity: a binding for this user beats one for this chat, which beats one for this chat type,
    which beats an "any" binding. Only enabled bindings whose agent is active take part.
    One query; the agent comes with it.
    """
    user_match = Q(user_open_id="")
    if user_open_id:
        user_match |= Q(user_open_id=user_open_id)
    chat_match = Q(chat_id="")
    if chat_id:
        chat_match |= Q(chat_id=chat_id)
    return (
        Binding.objects.for_tenant(bot.tenant_id)
        .filter(bot=bot, is_enabled=True, agent__is_active=True)
        .filter(user_match, chat_match, chat_type__in=[chat_type, Binding.ChatType.ANY])
        # Weights are powers of two so a single more specific rung outranks any mix of weaker ones.
        .annotate(
            specificity=_scope_rank(~Q(user_open_id=""), 4)
            + _scope_rank(~Q(chat_id=""), 2)
            + _scope_rank(~Q(chat_type=Binding.ChatType.ANY), 1)
        )
        .select_related("agent")
        .order_by("-specificity", "-priority", "id")
        .first()
    )
