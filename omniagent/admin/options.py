"""TenantScopedAdmin: the one place the admin decides what a staff user sees, changes and is audited for.

Every ModelAdmin and inline of a tenant-owned model derives from these classes. They fail closed:
a user with no membership sees nothing, a viewer changes nothing, another tenant's object answers
exactly like a missing id (404), and foreign-key choices only offer rows of tenants the user may
write to. Every add/change/delete made here writes an AuditLog row in the same transaction.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import router, transaction
from django.db.models import Model, QuerySet, URLField
from django.db.models.deletion import Collector
from django.http import Http404, HttpRequest

from apps.audit.models import AuditLog
from apps.audit.services import audit_diff, audit_record, audit_snapshot
from apps.tenants.models import Tenant
from omniagent.admin.access import TenantAccess, tenant_access
from omniagent.admin.forms import TenantInlineFormSet, TenantScopedModelForm, owning_tenant_id
from omniagent.admin.secrets import SecretField, is_secret_field, secret_field_names, secret_state_html


def scope_related_queryset(queryset: QuerySet, access: TenantAccess) -> QuerySet:
    """Limit choices of a related model to the tenants `access` may write to; unknown models get none."""
    if access.is_superuser:
        return queryset
    model = queryset.model
    writable = access.writable
    if model is Tenant:
        return queryset.filter(pk__in=writable)
    if any(f.name == "tenant" and f.is_relation and f.related_model is Tenant for f in model._meta.fields):
        return queryset.filter(tenant__in=writable)
    if model is get_user_model():
        # Only people already in one of the user's tenants: the user list of other tenants stays private.
        return queryset.filter(memberships__tenant__in=writable).distinct()
    return queryset.none()


def _tenant_for_audit(obj: Model) -> Tenant | None:
    if isinstance(obj, Tenant):
        return obj
    tenant_id = getattr(obj, "tenant_id", None)
    return Tenant.objects.filter(pk=tenant_id).first() if tenant_id else None


class _ScopingMixin:
    """Shared by ModelAdmin and InlineModelAdmin: FK choices and secret inputs."""

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if is_secret_field(db_field):
            return SecretField(
                model_required=not db_field.blank,
                label=db_field.verbose_name.capitalize(),
                help_text=db_field.help_text,
            )
        if isinstance(db_field, URLField):
            kwargs.setdefault("assume_scheme", "https")  # what Django 6 will do; silences its warning
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is not None and hasattr(field, "queryset"):
            field.queryset = scope_related_queryset(field.queryset, tenant_access(request))
        return field

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if field is not None and hasattr(field, "queryset"):
            field.queryset = scope_related_queryset(field.queryset, tenant_access(request))
        return field


class TenantScopedAdmin(_ScopingMixin, admin.ModelAdmin):
    """ModelAdmin for a tenant-owned model (or Tenant itself, with tenant_lookup = "pk")."""

    form = TenantScopedModelForm
    tenant_lookup = "tenant"  # queryset path from this model to its tenant id
    # True: nobody adds or changes rows here (transcripts, logs). Owners/admins may still delete them:
    # a tenant can erase its own data, and deleting a bot must not be blocked by its event history.
    read_only = False
    superuser_delete_only = False  # True: only superusers delete (e.g. whole tenants)

    def __init__(self, model, admin_site) -> None:
        super().__init__(model, admin_site)
        self.secret_fields = secret_field_names(model)
        # "<secret>_state" read-only displays: view-only pages show these instead of the value.
        for name in self.secret_fields:
            setattr(self, f"{name}_state", self._make_state_display(name))
        # A secret in a list column or in search would show or probe it: refuse to start.
        exposed = set(self.secret_fields) & {
            *(f for f in self.list_display if isinstance(f, str)),
            *(f.lstrip("^=@") for f in self.search_fields),
            *(f if isinstance(f, str) else f[0] for f in self.list_filter if isinstance(f, str | tuple)),
        }
        if exposed:
            raise ImproperlyConfigured(f"{type(self).__name__}: secret field(s) {sorted(exposed)} in list/search")

    @staticmethod
    def _make_state_display(name: str):
        @admin.display(description=name.replace("_", " "))
        def display(obj):
            return secret_state_html(bool(getattr(obj, name, "")) if obj is not None else False)

        return display

    # --- what a user may see -------------------------------------------------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        access = tenant_access(request)
        if access.is_superuser:
            return queryset
        if not access.readable:
            return queryset.none()
        return queryset.filter(**{f"{self.tenant_lookup}__in": access.readable})

    def get_object(self, request: HttpRequest, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            # Missing and foreign objects get the same answer, so ids of other tenants leak nothing.
            raise Http404("No such object.")
        return obj

    def tenant_id_of(self, obj: Model) -> int | None:
        return owning_tenant_id(obj)

    # --- what a user may do --------------------------------------------------------------------
    def has_module_permission(self, request: HttpRequest) -> bool:
        return tenant_access(request).can_read_any

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        access = tenant_access(request)
        return access.can_read_any if obj is None else access.can_read(self.tenant_id_of(obj))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not self.read_only and tenant_access(request).can_write_any

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        if self.read_only:
            return False
        access = tenant_access(request)
        return access.can_write_any if obj is None else access.can_write(self.tenant_id_of(obj))

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        access = tenant_access(request)
        if self.superuser_delete_only:
            return access.is_superuser
        return access.can_write_any if obj is None else access.can_write(self.tenant_id_of(obj))

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        initial: dict[str, Any] = super().get_changeform_initial_data(request)
        writable = tenant_access(request).writable
        if "tenant" not in initial and len(writable) == 1:
            initial["tenant"] = next(iter(writable))
        return initial

    def get_fieldsets(self, request: HttpRequest, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj) or not self.secret_fields:
            return fieldsets
        # View-only pages render every field read-only from the model: swap secrets for their state.
        swap = {name: f"{name}_state" for name in self.secret_fields}

        def swapped(fields):
            # A fieldset line may itself be a tuple of fields shown side by side.
            return [
                swap.get(f, f) if isinstance(f, str) else swapped(f) if isinstance(f, list | tuple) else f
                for f in fields
            ]

        return [(title, {**opts, "fields": swapped(opts["fields"])}) for title, opts in fieldsets]

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        # Rows never move between tenants: their bindings, transcripts, ... would be left behind
        # pointing across the boundary. A wrong tenant means delete and recreate.
        if obj is not None and "tenant" not in readonly and any(f.name == "tenant" for f in self.opts.fields):
            readonly.insert(0, "tenant")
        # Read-only admins list secrets by state; the model value itself must never reach a template.
        return [f"{f}_state" if f in self.secret_fields else f for f in readonly]

    def response_action(self, request: HttpRequest, queryset: QuerySet):
        # Bulk actions only touch rows the user may write: a viewer in one tenant and owner in another
        # must not delete or retry the first tenant's rows with "select all".
        access = tenant_access(request)
        if not access.is_superuser:
            queryset = queryset.filter(**{f"{self.tenant_lookup}__in": access.writable})
        return super().response_action(request, queryset)

    # --- audit ---------------------------------------------------------------------------------
    def save_model(self, request: HttpRequest, obj: Model, form, change: bool) -> None:
        before = audit_snapshot(type(obj)._base_manager.get(pk=obj.pk)) if change and obj.pk else {}
        super().save_model(request, obj, form, change)
        changes = audit_diff(before, audit_snapshot(obj))
        if changes or not change:
            audit_record(
                tenant=_tenant_for_audit(obj),
                actor=request.user,
                action=AuditLog.Action.UPDATE if change else AuditLog.Action.CREATE,
                obj=obj,
                changes=changes,
            )

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        _audit_delete(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        with transaction.atomic(using=router.db_for_write(self.model)):
            for obj in queryset:
                _audit_delete(request, obj)
            super().delete_queryset(request, queryset)

    def save_formset(self, request: HttpRequest, form, formset, change: bool) -> None:
        model = formset.model
        existing = [f.instance.pk for f in formset.initial_forms if f.instance.pk]
        # Inline instances were already modified by validation: read "before" from the database.
        before = {o.pk: audit_snapshot(o) for o in model._base_manager.filter(pk__in=existing)}
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            _audit_delete(request, obj, before.get(obj.pk))
            obj.delete()
        for obj in instances:
            is_new = obj.pk is None
            obj.save()
            changes = audit_diff({} if is_new else before.get(obj.pk, {}), audit_snapshot(obj))
            if changes or is_new:
                audit_record(
                    tenant=_tenant_for_audit(obj),
                    actor=request.user,
                    action=AuditLog.Action.CREATE if is_new else AuditLog.Action.UPDATE,
                    obj=obj,
                    changes=changes,
                )
        formset.save_m2m()


def _audit_delete(request: HttpRequest, obj: Model, before: dict | None = None) -> None:
    changes = audit_diff(before if before is not None else audit_snapshot(obj), {})
    cascade = _cascade_counts(obj)
    if cascade:
        changes["deleted with it"] = {"old": cascade, "new": None}
    audit_record(
        tenant=_tenant_for_audit(obj),
        actor=request.user,
        action=AuditLog.Action.DELETE,
        obj=obj,
        changes=changes,
    )


def _cascade_counts(obj: Model) -> dict[str, int]:
    """What deleting ``obj`` also deletes, per model ("transcripts.Conversation": 12), as Django's
    delete will: one audit row says what went with it instead of one row per message."""
    collector = Collector(using=router.db_for_write(type(obj)))
    collector.collect([obj])
    counts: dict[str, int] = {}
    for model, instances in collector.data.items():
        counts[model._meta.label] = counts.get(model._meta.label, 0) + len(instances)
    for queryset in collector.fast_deletes:  # cascades Django deletes without loading them
        label = queryset.model._meta.label
        counts[label] = counts.get(label, 0) + queryset.count()
    counts[obj._meta.label] -= 1  # the object itself
    return {label: n for label, n in sorted(counts.items()) if n}


class TenantScopedInline(_ScopingMixin, admin.TabularInline):
    """Inline of a tenant-owned model under a parent; rights follow the parent's tenant."""

    form = TenantScopedModelForm
    formset = TenantInlineFormSet
    extra = 0
    read_only = False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        access = tenant_access(request)
        if access.is_superuser:
            return queryset
        return queryset.filter(tenant__in=access.readable) if access.readable else queryset.none()

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        access = tenant_access(request)
        return access.can_read_any if obj is None else access.can_read(owning_tenant_id(obj))

    def _can_write(self, request: HttpRequest, obj) -> bool:
        if self.read_only:
            return False
        access = tenant_access(request)
        return access.can_write_any if obj is None else access.can_write(owning_tenant_id(obj))

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._can_write(request, obj)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._can_write(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._can_write(request, obj)
