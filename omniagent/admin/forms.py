"""Base admin forms: secrets write-only, and every chosen related row in the row's own tenant."""

from __future__ import annotations

from django import forms

from apps.tenants.models import Tenant
from omniagent.admin.secrets import SecretFormMixin


def owning_tenant_id(obj) -> int | None:
    """The tenant a row belongs to (a Tenant owns itself); None for rows outside any tenant."""
    if isinstance(obj, Tenant):
        return obj.pk
    return getattr(obj, "tenant_id", None)


class TenantScopedModelForm(SecretFormMixin, forms.ModelForm):
    """Refuses a bot, agent, ... of one tenant on a row of another (possible for multi-tenant staff)."""

    # Set by TenantInlineFormSet: rows edited inline belong to their parent's tenant. The parent is
    # read at clean time because on an add page its tenant is only known once its own form is valid.
    parent = None

    def _row_tenant_id(self, cleaned) -> int | None:
        tenant = cleaned.get("tenant")
        if isinstance(tenant, Tenant):
            return tenant.pk
        if self.parent is not None:
            return owning_tenant_id(self.parent)
        return getattr(self.instance, "tenant_id", None)

    def clean(self):
        cleaned = super().clean()
        tenant_id = self._row_tenant_id(cleaned)
        if tenant_id is None:
            return cleaned
        for name, field in self.fields.items():
            value = cleaned.get(name)
            if name == "tenant" or not isinstance(field, forms.ModelChoiceField) or value is None:
                continue
            for related in value if isinstance(field, forms.ModelMultipleChoiceField) else [value]:
                related_tenant = owning_tenant_id(related)
                if related_tenant is not None and related_tenant != tenant_id:
                    kind = self._meta.model._meta.verbose_name
                    self.add_error(name, f"“{related}” belongs to another tenant than this {kind}.")
        return cleaned


class TenantInlineFormSet(forms.BaseInlineFormSet):
    """Inline rows take their tenant from the parent (bindings under a bot belong to the bot's tenant)."""

    @classmethod
    def get_default_prefix(cls) -> str:
        # Tenant FKs have related_name="+", which leaves Django without a prefix ("-1-0-user").
        assert cls.model is not None  # set by inlineformset_factory
        return super().get_default_prefix() or f"{cls.model._meta.model_name}s"

    def _construct_form(self, i, **kwargs):
        form = super()._construct_form(i, **kwargs)
        form.parent = self.instance
        return form

    def save_new(self, form, commit=True):
        obj = super().save_new(form, commit=False)
        if hasattr(obj, "tenant_id"):
            obj.tenant_id = owning_tenant_id(self.instance)
        if commit:
            obj.save()
            form.save_m2m()
        return obj
