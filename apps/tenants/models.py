from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from timezone_field import TimeZoneField

from omniagent.db import TenantOwnedModel


class Tenant(models.Model):
    """An organisation using OmniAgent; owns bots, agents, bindings and transcripts."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    time_zone = TimeZoneField(default="Asia/Shanghai")
    instructions = models.TextField(blank=True, help_text="Added to every agent's system prompt in this tenant.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    VIEWER = "viewer", "Viewer"


class Membership(TenantOwnedModel):
    """A user's role in one tenant; staff users see only tenants they are members of."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user_per_tenant")]

    def __str__(self) -> str:
        return f"{self.user} · {self.tenant_id} ({self.role})"


def hash_api_key(raw: str) -> str:
    # API keys are long random strings, so one SHA-256 is enough (no password stretching needed).
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKey(TenantOwnedModel):
    """A tenant's key for the REST/OpenAI/MCP surfaces; only its hash is stored."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="First characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="apikey_unique_name_per_tenant")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
