"""Who may see and change which tenant's rows in the admin, derived from Membership roles.

Django's model permissions are not used for tenant staff: a tenant admin's rights come only from
their Membership rows (owner/admin may change, viewer may only look). Superusers see everything.
Anything else — anonymous, inactive, non-staff, staff without a membership — gets nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.http import HttpRequest

from apps.tenants.models import Membership, Role

WRITE_ROLES = frozenset({Role.OWNER.value, Role.ADMIN.value})
_CACHE_ATTR = "_omniagent_tenant_access"


@dataclass(frozen=True)
class TenantAccess:
    """The tenants a request's user may read and write; empty means nothing at all."""

    is_superuser: bool = False
    roles: dict[int, str] = field(default_factory=dict)  # tenant id -> role

    @property
    def readable(self) -> frozenset[int]:
        return frozenset(self.roles)

    @property
    def writable(self) -> frozenset[int]:
        return frozenset(tid for tid, role in self.roles.items() if role in WRITE_ROLES)

    def can_read(self, tenant_id: int | None) -> bool:
        return self.is_superuser or (tenant_id is not None and tenant_id in self.roles)

    def can_write(self, tenant_id: int | None) -> bool:
        return self.is_superuser or (tenant_id is not None and self.roles.get(tenant_id) in WRITE_ROLES)

    @property
    def can_read_any(self) -> bool:
        return self.is_superuser or bool(self.roles)

    @property
    def can_write_any(self) -> bool:
        return self.is_superuser or bool(self.writable)


NO_ACCESS = TenantAccess()


def tenant_access(request: HttpRequest) -> TenantAccess:
    """The request user's tenant access, loaded once per request (one query)."""
    user = getattr(request, "user", None)
    cached = getattr(request, _CACHE_ATTR, None)
    if cached is not None and cached[0] == getattr(user, "pk", None):
        return cached[1]
    access = _load(user)
    setattr(request, _CACHE_ATTR, (getattr(user, "pk", None), access))
    return access


def _load(user) -> TenantAccess:
    if user is None or not user.is_authenticated or not user.is_active or not user.is_staff:
        return NO_ACCESS
    if user.is_superuser:
        return TenantAccess(is_superuser=True)
    # Inactive tenants stay visible to their staff (they may need to look back), but only active
    # memberships exist as rows; deleting the row is how access is withdrawn.
    roles = dict(Membership.objects.filter(user=user).values_list("tenant_id", "role"))
    return TenantAccess(roles=roles)
