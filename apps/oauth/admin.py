"""Admin for users' Feishu OAuth tokens: listed and revocable, never shown or edited."""

from __future__ import annotations

from django.contrib import admin

from apps.oauth.models import OAuthToken
from omniagent.admin.options import TenantScopedAdmin


@admin.register(OAuthToken)
class OAuthTokenAdmin(TenantScopedAdmin):
    list_display = ("user_open_id", "bot", "tenant", "access_expires_at", "refresh_expires_at", "updated_at")
    list_filter = (("tenant", admin.RelatedOnlyFieldListFilter), ("bot", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("tenant", "bot")
    search_fields = ("user_open_id", "bot__app_id", "scopes")
    fields = (
        "tenant", "bot", "user_open_id", "access_token_state", "access_expires_at", "refresh_token_state",
        "refresh_expires_at", "scopes", "created_at", "updated_at",
    )  # fmt: skip
    readonly_fields = fields

    # Tokens come only from the OAuth flow; people may look at them and delete (revoke) them.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
