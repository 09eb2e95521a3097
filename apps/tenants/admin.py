"""Admin for tenants (with members), API keys, and the per-tenant dashboard page."""

from __future__ import annotations

import secrets

from django.contrib import admin, messages
from django.db.models import Model
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from apps.audit.models import AuditLog
from apps.audit.services import audit_record
from apps.tenants.admin_dashboard import tenant_dashboard
from apps.tenants.models import ApiKey, Membership, Role, Tenant, hash_api_key
from omniagent.admin.access import tenant_access
from omniagent.admin.forms import owning_tenant_id
from omniagent.admin.options import TenantScopedAdmin, TenantScopedInline

API_KEY_PREFIX_LENGTH = 8  # same as provisioning, so keys look alike wherever they were made
_NEW_KEY_ATTR = "_omniagent_new_api_key_shown"


def api_key_generate() -> str:
    return "oa_" + secrets.token_urlsafe(32)


class MembershipInline(TenantScopedInline):
    """Who belongs to the tenant and with which role: changed by its owners (and superusers) only.

    A tenant admin may change everything else of the tenant, but not roles: otherwise an admin could
    make themselves owner or remove the owners. Admins and viewers see the members read-only.
    """

    model = Membership
    fields = ("user", "role")

    def _can_write(self, request: HttpRequest, obj) -> bool:
        access = tenant_access(request)
        if access.is_superuser:
            return True
        if obj is None:
            return Role.OWNER.value in access.roles.values()
        tenant_id = owning_tenant_id(obj)
        return tenant_id is not None and access.roles.get(tenant_id) == Role.OWNER.value


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    tenant_lookup = "pk"
    superuser_delete_only = True  # deleting a tenant cascades to everything it owns
    list_display = ("name", "slug", "time_zone", "is_active", "created_at", "dashboard_link")
    list_filter = ("is_active",)
    search_fields = ("name", "slug")
    inlines = (MembershipInline,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A new tenant belongs to nobody yet, so only superusers create them.
        return tenant_access(request).is_superuser

    @admin.display(description="Dashboard")
    def dashboard_link(self, obj: Tenant):
        return format_html('<a href="{}">dashboard</a>', reverse("admin:tenants_tenant_dashboard", args=[obj.pk]))

    def get_urls(self):
        urls = [
            path(
                "<path:object_id>/dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="tenants_tenant_dashboard",
            )
        ]
        return urls + super().get_urls()

    def dashboard_view(self, request: HttpRequest, object_id: str):
        tenant = self.get_object(request, object_id)  # 404 for a missing or foreign tenant
        context = {
            **self.admin_site.each_context(request),
            "title": f"{tenant.name} — dashboard",
            "subtitle": None,
            "opts": self.opts,
            "original": tenant,
            "has_view_permission": self.has_view_permission(request, tenant),
            "dashboard": tenant_dashboard(tenant=tenant),
        }
        return TemplateResponse(request, "admin/tenants/tenant/dashboard.html", context)


@admin.register(ApiKey)
class ApiKeyAdmin(TenantScopedAdmin):
    list_display = ("name", "tenant", "prefix_display", "scopes", "last_used_at", "revoked_at", "created_at")
    list_filter = (("tenant", admin.RelatedOnlyFieldListFilter), ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("tenant",)
    search_fields = ("name", "prefix")
    actions = ("revoke",)

    def get_fields(self, request: HttpRequest, obj=None):
        if obj is None:
            return ("tenant", "name", "scopes")
        return ("tenant", "name", "prefix_display", "scopes", "revoked_at", "last_used_at", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return () if obj is None else ("tenant", "prefix_display", "last_used_at", "created_at")

    @admin.display(description="Key", ordering="prefix")
    def prefix_display(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"

    def save_model(self, request: HttpRequest, obj: Model, form, change: bool) -> None:
        assert isinstance(obj, ApiKey)
        raw = None
        if not change:
            raw = api_key_generate()
            obj.prefix = raw[:API_KEY_PREFIX_LENGTH]
            obj.key_hash = hash_api_key(raw)
        super().save_model(request, obj, form, change)
        if raw is not None:
            # Shown once: only the hash is stored, so this message is the only place the key exists.
            self.message_user(
                request,
                format_html(
                    'New API key “{}”: <code class="oa-new-api-key">{}</code> — copy it now, '
                    "it will not be shown again.",
                    obj.name,
                    raw,
                ),
                messages.WARNING,
            )
            setattr(request, _NEW_KEY_ATTR, True)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None):
        if not getattr(request, _NEW_KEY_ATTR, False):
            return super().response_add(request, obj, post_url_continue)
        # Answer with a page instead of the usual redirect: the message carrying the key is shown
        # and consumed by this very response, so it is never stored in a cookie or the session.
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "subtitle": None,
            "opts": self.opts,
            "original": obj,
        }
        return TemplateResponse(request, "admin/tenants/apikey/created.html", context)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset):
        now = timezone.now()
        keys = list(queryset.filter(revoked_at__isnull=True).select_related("tenant"))
        for key in keys:
            key.revoked_at = now
            key.save(update_fields=["revoked_at", "updated_at"])
            audit_record(
                tenant=key.tenant,
                actor=request.user,
                action=AuditLog.Action.UPDATE,
                obj=key,
                changes={"revoked_at": {"old": None, "new": now.isoformat()}},
            )
        self.message_user(request, f"Revoked {len(keys)} key(s).", messages.SUCCESS)
