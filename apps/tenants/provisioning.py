"""Declarative provisioning (DESIGN 4.4): apply a YAML file of tenants, admins, keys, agents, bots, bindings.

`provision_load` parses the file and substitutes `${NAME}` from the environment (after parsing, so a
value can never break the YAML); `provision_apply` creates or updates rows in one transaction and
writes an audit row for each change. Applying the same file twice changes nothing: a row is saved
only when a value given in the file differs from the stored one (secrets compared decrypted,
passwords with check_password, API keys by hash). Fields a file leaves out are left as they are;
nothing is ever deleted.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from django.contrib.auth.hashers import check_password
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import models, transaction

from apps.agents.models import Agent
from apps.audit.models import AuditLog
from apps.audit.services import audit_diff, audit_record, audit_snapshot
from apps.bindings.models import Binding
from apps.bots.models import Bot
from apps.tenants.models import ApiKey, Membership, Role, Tenant, hash_api_key

ACTOR_LABEL = "provision"
API_KEY_PREFIX_LENGTH = 8
API_KEY_MIN_LENGTH = 16

# ${NAME} or ${NAME:-default}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_TENANT_FIELDS = {"slug", "name", "time_zone", "instructions", "is_active"}
_ADMIN_FIELDS = {"username", "email", "password", "role", "first_name", "last_name", "is_active"}
_API_KEY_FIELDS = {"name", "key", "scopes"}
_AGENT_FIELDS = {
    f.name for f in Agent._meta.concrete_fields if f.name not in {"id", "tenant", "created_at", "updated_at"}
}
# Status fields (last event, connection state) belong to the running system, not to the file.
_BOT_FIELDS = {
    "app_id", "name", "app_secret", "verification_token", "encrypt_key", "mode", "base_url", "bot_open_id", "is_active",
}  # fmt: skip
_BINDING_IDENTITY = ("chat_type", "chat_id", "user_open_id")
_BINDING_FIELDS = {
    "bot", "agent", *_BINDING_IDENTITY, "require_mention", "priority", "is_enabled", "instructions", "welcome_message",
}  # fmt: skip


@dataclass(frozen=True)
class _Section:
    """A list under a tenant entry: its fields, required fields, identity and the method applying an item."""

    name: str
    handler: str
    allowed: set[str]
    required: tuple[str, ...]
    identity: tuple[str, ...]
    identity_defaults: Mapping[str, str] = field(default_factory=dict)


# Order matters: bindings refer to the bots and agents applied before them.
_SECTIONS = (
    _Section("admins", "admin", _ADMIN_FIELDS, ("username",), ("username",)),
    _Section("api_keys", "api_key", _API_KEY_FIELDS, ("name", "key"), ("name",)),
    _Section("agents", "agent", _AGENT_FIELDS, ("slug",), ("slug",)),
    _Section("bots", "bot", _BOT_FIELDS, ("app_id",), ("app_id",)),
    _Section(
        "bindings", "binding", _BINDING_FIELDS, ("bot", "agent"), ("bot", "agent", *_BINDING_IDENTITY),
        identity_defaults={"chat_type": "any"},
    ),
)  # fmt: skip


class ProvisionError(Exception):
    """The file cannot be applied; the message names the entry (e.g. `tenants[0].bindings[1]`)."""


@dataclass
class ProvisionReport:
    """What one run did, counted per kind of object."""

    created: Counter = field(default_factory=Counter)
    updated: Counter = field(default_factory=Counter)
    unchanged: Counter = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        return bool(sum(self.created.values()) + sum(self.updated.values()))

    def summary(self) -> str:
        kinds = sorted(set(self.created) | set(self.updated) | set(self.unchanged))
        lines = [
            f"{kind}: {self.created[kind]} created, {self.updated[kind]} updated, {self.unchanged[kind]} unchanged"
            for kind in kinds
        ]
        total = (sum(self.created.values()), sum(self.updated.values()), sum(self.unchanged.values()))
        lines.append("total: {} created, {} updated, {} unchanged".format(*total))
        return "\n".join(lines)


# --- loading ------------------------------------------------------------------------------------


def _substitute(value: Any, where: str, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ProvisionError(f"{where}: environment variable {name} is not set")

        return _VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(item, f"{where}[{i}]", environ) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: _substitute(item, f"{where}.{key}" if where else str(key), environ) for key, item in value.items()}
    return value


def provision_load(*, path: Path | str, environ: Mapping[str, str] | None = None) -> dict:
    """Parse a provisioning file and fill in `${NAME}` / `${NAME:-default}` from the environment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProvisionError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProvisionError(f"{path}: the top level must be a mapping with a 'tenants' list")
    return _substitute(data, "", os.environ if environ is None else environ)


# --- applying -----------------------------------------------------------------------------------


def _mapping(value: Any, where: str, *, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise ProvisionError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ProvisionError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    for name in required:
        if value.get(name) in (None, ""):
            raise ProvisionError(f"{where}: {name!r} is required")
    return value


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProvisionError(f"{where}: expected a list, got {type(value).__name__}")
    return value


M = TypeVar("M", bound=models.Model)


def _first_message(error: ValidationError) -> str:
    return "; ".join(error.messages)


def _normalise(model: type[models.Model], values: dict, where: str) -> dict:
    """Convert file values to what the model field holds, so comparing with stored values is exact."""
    result = {}
    for name, raw in values.items():
        model_field = model._meta.get_field(name)
        if not isinstance(model_field, models.Field):  # a relation's reverse side: nothing to provision
            raise ProvisionError(f"{where}.{name}: not a field of {model._meta.model_name}")
        if raw is None and model_field.empty_strings_allowed and not model_field.null:
            raw = ""
        try:
            result[name] = model_field.to_python(raw)
        except ValidationError as exc:
            raise ProvisionError(f"{where}.{name}: {_first_message(exc)}") from None
    return result


def _full_clean(obj: models.Model, where: str, *, aliases: Mapping[str, str] | None = None) -> None:
    try:
        obj.full_clean()
    except ValidationError as exc:
        name, messages = next(iter(exc.message_dict.items()))
        name = (aliases or {}).get(name, name)
        suffix = "" if name == "__all__" else f".{name}"
        raise ProvisionError(f"{where}{suffix}: {'; '.join(messages)}") from None


class _Provisioner:
    def __init__(self) -> None:
        self.report = ProvisionReport()
        self._seen_users: dict[str, tuple[str, dict]] = {}
        self._seen_bots: dict[str, str] = {}

    # One helper for every kind of row: find by identity, create or update only what differs.
    def sync(
        self,
        *,
        kind: str,
        model: type[M],
        tenant: Tenant | None,
        where: str,
        lookup: dict,
        values: dict,
        aliases: Mapping[str, str] | None = None,
    ) -> M:
        obj = model._default_manager.filter(**lookup).first()
        if obj is None:
            obj = model(**lookup, **values)
            _full_clean(obj, where, aliases=aliases)
            obj.save()
            # A new tenant's own audit row belongs to that tenant.
            self.audit(obj if isinstance(obj, Tenant) else tenant, AuditLog.Action.CREATE, obj, {})
            self.report.created[kind] += 1
            return obj
        changed = {name: value for name, value in values.items() if getattr(obj, name) != value}
        if not changed:
            self.report.unchanged[kind] += 1
            return obj
        before = audit_snapshot(obj)
        for name, value in changed.items():
            setattr(obj, name, value)
        _full_clean(obj, where, aliases=aliases)
        obj.save()
        self.audit(tenant, AuditLog.Action.UPDATE, obj, before)
        self.report.updated[kind] += 1
        return obj

    def audit(self, tenant: Tenant | None, action: str, obj: models.Model, before: dict) -> None:
        # Secrets (encrypted fields, password, key hash) come out of audit_diff as "changed".
        changes = audit_diff(before, audit_snapshot(obj))
        audit_record(tenant=tenant, actor_label=ACTOR_LABEL, action=action, obj=obj, changes=changes)

    # --- entries -------------------------------------------------------------------------------

    def apply(self, config: dict) -> None:
        _mapping(config, "file", allowed={"tenants"})
        seen: set[str] = set()
        for i, entry in enumerate(_list(config.get("tenants"), "tenants")):
            where = f"tenants[{i}]"
            entry = _mapping(entry, where, allowed=_TENANT_FIELDS | {s.name for s in _SECTIONS}, required=("slug",))
            if entry["slug"] in seen:
                raise ProvisionError(f"{where}: tenant {entry['slug']!r} appears twice")
            seen.add(entry["slug"])
            self.tenant(entry, where)

    def tenant(self, entry: dict, where: str) -> None:
        values = _normalise(Tenant, {k: v for k, v in entry.items() if k in _TENANT_FIELDS - {"slug"}}, where)
        tenant = Tenant.objects.filter(slug=entry["slug"]).first()
        tenant = self.sync(
            kind="tenants", model=Tenant, tenant=tenant, where=where, lookup={"slug": entry["slug"]}, values=values
        )
        for section in _SECTIONS:
            self.section(entry, where, section, tenant)

    def section(self, entry: dict, where: str, section: _Section, tenant: Tenant) -> None:
        handler = getattr(self, section.handler)
        seen: dict[tuple, str] = {}
        for j, item in enumerate(_list(entry.get(section.name), f"{where}.{section.name}")):
            item_where = f"{where}.{section.name}[{j}]"
            item = _mapping(item, item_where, allowed=section.allowed, required=section.required)
            # Two entries with one identity would fight over the row on every run: refuse them.
            key = tuple(str(item.get(part) or section.identity_defaults.get(part, "")) for part in section.identity)
            if key in seen:
                raise ProvisionError(f"{item_where}: same {'/'.join(section.identity)} as {seen[key]}")
            seen[key] = item_where
            handler(tenant, item, item_where)

    def admin(self, tenant: Tenant, item: dict, where: str) -> None:
        username = item["username"]
        password = item.get("password") or None
        role = item.get("role") or Role.ADMIN
        if role not in Role.values:
            raise ProvisionError(f"{where}.role: must be one of {', '.join(Role.values)}, got {role!r}")
        fields = {k: v for k, v in item.items() if k in {"email", "first_name", "last_name", "is_active"}}
        previous = self._seen_users.get(username)
        signature = {**fields, "password": password}
        if previous and previous[1] != signature:
            raise ProvisionError(f"{where}: user {username!r} is also declared at {previous[0]} with other details")
        self._seen_users[username] = (where, signature)

        user = User.objects.filter(username=username).first()
        if password is not None:
            try:
                validate_password(password, user)
            except ValidationError as exc:
                raise ProvisionError(f"{where}.password: {_first_message(exc)}") from None
        values = _normalise(User, {**fields, "is_staff": True}, where)
        if user is None:
            user = User(username=username, **values)
            if password is None:
                user.set_unusable_password()
            else:
                user.set_password(password)
            _full_clean(user, where)
            user.save()
            self.audit(tenant, AuditLog.Action.CREATE, user, {})
            self.report.created["users"] += 1
        else:
            before = audit_snapshot(user)
            changed = {name: value for name, value in values.items() if getattr(user, name) != value}
            for name, value in changed.items():
                setattr(user, name, value)
            # hashers.check_password, not user.check_password: the latter may re-hash and save.
            if password is not None and not check_password(password, user.password):
                user.set_password(password)
                changed["password"] = True
            if changed:
                _full_clean(user, where)
                user.save()
                self.audit(tenant, AuditLog.Action.UPDATE, user, before)
                self.report.updated["users"] += 1
            else:
                self.report.unchanged["users"] += 1
        self.sync(
            kind="memberships",
            model=Membership,
            tenant=tenant,
            where=where,
            lookup={"tenant": tenant, "user": user},
            values={"role": role},
        )

    def api_key(self, tenant: Tenant, item: dict, where: str) -> None:
        raw = str(item["key"])
        if len(raw) < API_KEY_MIN_LENGTH:
            raise ProvisionError(f"{where}.key: must be at least {API_KEY_MIN_LENGTH} characters")
        values = {"key_hash": hash_api_key(raw), "prefix": raw[:API_KEY_PREFIX_LENGTH]}
        if "scopes" in item:
            values["scopes"] = _normalise(ApiKey, {"scopes": item["scopes"]}, where)["scopes"]
        self.sync(
            kind="api_keys",
            model=ApiKey,
            tenant=tenant,
            where=where,
            lookup={"tenant": tenant, "name": item["name"]},
            values=values,
            aliases={"key_hash": "key"},
        )

    def agent(self, tenant: Tenant, item: dict, where: str) -> None:
        values = _normalise(Agent, {k: v for k, v in item.items() if k != "slug"}, where)
        self.sync(
            kind="agents",
            model=Agent,
            tenant=tenant,
            where=where,
            lookup={"tenant": tenant, "slug": item["slug"]},
            values=values,
        )

    def bot(self, tenant: Tenant, item: dict, where: str) -> None:
        app_id = str(item["app_id"])
        if app_id in self._seen_bots:
            raise ProvisionError(f"{where}: bot {app_id!r} is also declared at {self._seen_bots[app_id]}")
        self._seen_bots[app_id] = where
        owner = Bot.objects.filter(app_id=app_id).exclude(tenant=tenant).select_related("tenant").first()
        if owner is not None:
            raise ProvisionError(f"{where}: bot {app_id!r} belongs to tenant {owner.tenant.slug!r}")
        values = _normalise(Bot, {k: v for k, v in item.items() if k != "app_id"}, where)
        self.sync(
            kind="bots",
            model=Bot,
            tenant=tenant,
            where=where,
            lookup={"tenant": tenant, "app_id": app_id},
            values=values,
        )

    def binding(self, tenant: Tenant, item: dict, where: str) -> None:
        bot = Bot.objects.for_tenant(tenant).filter(app_id=str(item["bot"])).first()
        if bot is None:
            raise ProvisionError(f"{where}: unknown bot {item['bot']!r}")
        agent = Agent.objects.for_tenant(tenant).filter(slug=str(item["agent"])).first()
        if agent is None:
            raise ProvisionError(f"{where}: unknown agent {item['agent']!r}")
        identity = _normalise(
            Binding,
            {"chat_type": item.get("chat_type") or Binding.ChatType.ANY}
            | {name: item.get(name) for name in ("chat_id", "user_open_id")},
            where,
        )
        values = _normalise(
            Binding, {k: v for k, v in item.items() if k not in {"bot", "agent", *_BINDING_IDENTITY}}, where
        )
        self.sync(
            kind="bindings",
            model=Binding,
            tenant=tenant,
            where=where,
            lookup={"tenant": tenant, "bot": bot, "agent": agent, **identity},
            values=values,
        )


def provision_apply(*, config: dict, dry_run: bool = False) -> ProvisionReport:
    """Apply a loaded provisioning config in one transaction; any error applies nothing."""
    provisioner = _Provisioner()
    with transaction.atomic():
        provisioner.apply(config)
        if dry_run:
            transaction.set_rollback(True)
    return provisioner.report


def provision_file(
    *, path: Path | str, environ: Mapping[str, str] | None = None, dry_run: bool = False
) -> ProvisionReport:
    return provision_apply(config=provision_load(path=path, environ=environ), dry_run=dry_run)
