"""Admin for agents: model endpoint (API key write-only), prompt, tools, memory; bindings inline."""

from __future__ import annotations

from django.contrib import admin

from apps.agents.models import Agent
from apps.bindings.admin import BindingUnderAgentInline
from apps.webchat.admin_links import webchat_link
from omniagent.admin.options import TenantScopedAdmin


@admin.register(Agent)
class AgentAdmin(TenantScopedAdmin):
    list_display = ("__str__", "slug", "tenant", "model", "base_url", "is_active", "updated_at", webchat_link)
    list_filter = ("is_active", ("tenant", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("tenant",)
    search_fields = ("slug", "name", "model", "description")
    fieldsets = (
        (None, {"fields": ("tenant", "slug", "name", "description", "is_active")}),
        (
            "Model",
            {
                "fields": (
                    "base_url",
                    "api_key",
                    "model",
                    "fallback_model",
                    "temperature",
                    "max_output_tokens",
                    "timeout",
                )
            },
        ),
        ("Behaviour", {"fields": ("system_prompt", "tools", "max_tool_rounds")}),
        ("Memory", {"fields": ("memory_rounds", "memory_token_budget", "memory_idle_minutes")}),
    )
    inlines = (BindingUnderAgentInline,)
