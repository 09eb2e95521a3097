"""Admin for bots (Feishu/Lark apps): credentials write-only, live connection status, bindings inline."""

from __future__ import annotations

from django.contrib import admin

from apps.bindings.admin import BindingUnderBotInline
from apps.bots.models import Bot
from omniagent.admin.options import TenantScopedAdmin


@admin.register(Bot)
class BotAdmin(TenantScopedAdmin):
    list_display = (
        "__str__", "app_id", "tenant", "mode", "connection_state", "last_event_at", "is_active",
    )  # fmt: skip
    list_filter = ("mode", "connection_state", "is_active", ("tenant", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("tenant",)
    search_fields = ("name", "app_id", "bot_open_id")
    readonly_fields = ("last_event_at", "connection_state", "connection_detail", "connection_updated_at")
    fieldsets = (
        (None, {"fields": ("tenant", "name", "app_id", "mode", "base_url", "is_active")}),
        ("Credentials", {"fields": ("app_secret", "verification_token", "encrypt_key")}),
        ("Status", {"fields": ("bot_open_id", *readonly_fields)}),
    )
    inlines = (BindingUnderBotInline,)
