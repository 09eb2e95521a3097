"""Write-only form inputs for secrets: the stored value is never sent back to the browser.

An empty input keeps the stored value; a "clear" box (optional secrets only) removes it; anything
typed replaces it. Next to the input a badge says whether a value is set. Every admin form gets this
for every EncryptedTextField through `TenantScopedAdmin.formfield_for_dbfield`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import format_html

from omniagent.fields import EncryptedTextField


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


KEEP = _Marker("KEEP")  # empty input on an existing row: leave the stored secret alone
CLEAR = _Marker("CLEAR")  # the clear box was ticked: store an empty value


def is_secret_field(model_field) -> bool:
    return isinstance(model_field, EncryptedTextField)


def secret_field_names(model) -> list[str]:
    return [f.name for f in model._meta.get_fields() if is_secret_field(f)]


def secret_state_html(is_set: bool):
    if is_set:
        return format_html('<span class="oa-secret oa-secret-set" title="stored encrypted">{}</span>', "set")
    return format_html('<span class="oa-secret oa-secret-unset">{}</span>', "not set")


class SecretWidget(forms.PasswordInput):
    """A password input that never renders a value, with a set/not-set badge and an optional clear box."""

    def __init__(self, attrs=None) -> None:
        super().__init__(attrs={"autocomplete": "new-password", **(attrs or {})}, render_value=False)
        self.is_set = False
        self.clearable = False

    def render(self, name, value, attrs=None, renderer=None):
        # `value` is ignored on purpose: whatever the form holds, the browser gets an empty input.
        html = super().render(name, None, attrs, renderer)
        clear = ""
        if self.clearable and self.is_set:
            clear = format_html(
                ' <label class="oa-secret-clear"><input type="checkbox" name="{}__clear"> clear</label>', name
            )
        hint = "leave empty to keep the stored value" if self.is_set else ""
        return format_html(
            '{} {}{} <span class="help oa-secret-hint">{}</span>', html, secret_state_html(self.is_set), clear, hint
        )

    def value_from_datadict(self, data, files, name):
        if self.clearable and data.get(f"{name}__clear"):
            return CLEAR
        return data.get(name) or ""

    def value_omitted_from_data(self, data, files, name) -> bool:
        # An absent secret means "unchanged", which the field handles; never fall back to a model default.
        return False


class SecretField(forms.CharField):
    """Cleans to the new secret, CLEAR, or KEEP (empty input: leave the stored value as it is)."""

    widget = SecretWidget

    def __init__(self, *, model_required: bool, **kwargs) -> None:
        kwargs.setdefault("required", model_required)
        kwargs.pop("max_length", None)
        super().__init__(**kwargs)
        self.model_required = model_required

    def to_python(self, value):
        if value is CLEAR:
            return CLEAR
        return super().to_python(value)

    def validate(self, value) -> None:
        if value is CLEAR:
            if self.model_required:
                raise ValidationError("This secret is required and cannot be cleared.", code="required")
            return
        super().validate(value)

    def clean(self, value):
        value = super().clean(value)
        if value in ("", None):
            return KEEP
        return value

    def has_changed(self, initial, data) -> bool:
        if data is CLEAR:
            return bool(getattr(self.widget, "is_set", False))
        return bool(data)


if TYPE_CHECKING:  # what the mixin is mixed into, for the type checker
    _ModelForm = forms.ModelForm
else:
    _ModelForm = object


class SecretFormMixin(_ModelForm):
    """For ModelForms: wires SecretFields to the instance (badge, required only on add, keep on empty)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            if not isinstance(field, SecretField):
                continue
            is_set = bool(getattr(self.instance, name, "")) if self.instance.pk else False
            field.widget.is_set = is_set
            field.widget.clearable = not field.model_required
            # Editing an existing row: an empty input means "keep", so it cannot be required.
            if self.instance.pk and is_set:
                field.required = False
            # The plaintext must not linger in the form's initial data (templates, debug pages).
            self.initial.pop(name, None)

    def clean(self):
        cleaned = super().clean()
        for name, field in self.fields.items():
            if not isinstance(field, SecretField) or name not in cleaned:
                continue
            value = cleaned[name]
            if value is KEEP:
                # Leaving the key out makes construct_instance keep the instance's stored value.
                del cleaned[name]
            elif value is CLEAR:
                cleaned[name] = ""
        return cleaned
