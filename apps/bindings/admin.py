"""Admin for bindings: which agent answers which chats of a bot; also inline under bots and agents."""

from __future__ import annotations

from django.contrib import admin

from apps.bindings.models import Binding
from omniagent.admin.options import TenantScopedAdmin, TenantScopedInline

_INLINE_FIELDS: tuple[str, ...] = ("chat_type", "chat_id", "user_open_id", "require_mention", "priority", "is_enabled")


class _BindingInline(TenantScopedInline):
    model = Binding
    fields = _INLINE_FIELDS
    show_change_link = True


class BindingUnderBotInline(_BindingInline):
    fk_name = "bot"
    fields = ("agent", *_INLINE_FIELDS)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("agent")


class BindingUnderAgentInline(_BindingInline):
    fk_name = "agent"
    fields = ("bot", *_INLINE_FIELDS)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("bot")


@admin.register(Binding)
class BindingAdmin(TenantScopedAdmin):
    list_display = (
        "__str__", "tenant", "bot", "agent", "chat_type", "chat_id", "user_open_id", "priority", "is_enabled",
    )  # fmt: skip
    list_display_links = ("__str__",)
    list_filter = (
        "is_enabled",
        "chat_type",
        ("tenant", admin.RelatedOnlyFieldListFilter),
        ("bot", admin.RelatedOnlyFieldListFilter),
        ("agent", admin.RelatedOnlyFieldListFilter),
    )
    list_select_related = ("tenant", "bot", "agent")
    search_fields = ("chat_id", "user_open_id", "bot__app_id", "bot__name", "agent__slug", "agent__name")
    fieldsets = (
        (None, {"fields": ("tenant", "bot", "agent", "is_enabled")}),
        ("Which chats", {"fields": ("chat_type", "chat_id", "user_open_id", "require_mention", "priority")}),
        ("Behaviour", {"fields": ("instructions", "welcome_message")}),
    )
