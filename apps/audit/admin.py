"""Read-only admin for the audit trail, scoped to the tenants a staff user belongs to."""

from __future__ import annotations

import json

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from apps.audit.models import AuditLog
from omniagent.admin.options import TenantScopedAdmin


@admin.register(AuditLog)
class AuditLogAdmin(TenantScopedAdmin):
    read_only = True
    list_display = ("created_at", "tenant", "actor_label", "action", "object_type", "object_repr")
    list_filter = ("action", "object_type", ("tenant", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("tenant",)
    search_fields = ("actor_label", "object_repr", "object_id")
    date_hierarchy = "created_at"
    fields = (
        "created_at", "tenant", "actor", "actor_label", "action", "object_type", "object_id", "object_repr",
        "changes_display",
    )  # fmt: skip
    readonly_fields = fields

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # the trail is append-only, for superusers too

    @admin.display(description="Changes")
    def changes_display(self, obj: AuditLog):
        return format_html('<pre class="oa-json">{}</pre>', json.dumps(obj.changes, indent=2, ensure_ascii=False))
