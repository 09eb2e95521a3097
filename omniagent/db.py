"""Tenant-owned model base: every such row carries an indexed tenant and is looked up within it."""

from __future__ import annotations

from django.db import models


class TenantQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> TenantQuerySet:
        return self.filter(tenant=tenant)

    def for_tenants(self, tenants) -> TenantQuerySet:
        return self.filter(tenant__in=tenants)


class TenantOwnedModel(models.Model):
    """Abstract base for rows that belong to one tenant."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, db_index=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True
