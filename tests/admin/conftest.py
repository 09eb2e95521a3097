"""Admin test helpers: one spec per admin-registered tenant-owned model, and page helpers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser

import pytest
from django.db.models import Model
from django.urls import reverse

from apps.tenants.models import Tenant
from tests.factories import (
    AgentFactory,
    ApiKeyFactory,
    AuditLogFactory,
    BindingFactory,
    BotFactory,
    ConversationFactory,
    InboundEventFactory,
    LLMCallFactory,
    MembershipFactory,
    MessageFactory,
    OAuthTokenFactory,
    OutboundMessageFactory,
    TenantFactory,
    TurnFactory,
)


@dataclass(frozen=True)
class AdminSpec:
    """How to make rows of one admin-registered model inside a given tenant."""

    label: str  # "app_label.model_name"
    make: Callable[[Tenant], Model]
    editable: bool  # owners/admins may change rows (False: read-only for everybody)
    addable: bool

    @property
    def app_model(self) -> tuple[str, str]:
        app, model = self.label.split(".")
        return app, model

    def url(self, view: str, *args) -> str:
        app, model = self.app_model
        return reverse(f"admin:{app}_{model}_{view}", args=args)

    def __str__(self) -> str:
        return self.label


SPECS = [
    AdminSpec("tenants.tenant", lambda t: t, editable=True, addable=False),
    AdminSpec("tenants.apikey", lambda t: ApiKeyFactory(tenant=t), editable=True, addable=True),
    AdminSpec("bots.bot", lambda t: BotFactory(tenant=t), editable=True, addable=True),
    AdminSpec("agents.agent", lambda t: AgentFactory(tenant=t), editable=True, addable=True),
    AdminSpec("bindings.binding", lambda t: BindingFactory(bot=BotFactory(tenant=t)), editable=True, addable=True),
    AdminSpec("oauth.oauthtoken", lambda t: OAuthTokenFactory(bot=BotFactory(tenant=t)), editable=False, addable=False),
    AdminSpec("transcripts.conversation", lambda t: ConversationFactory(tenant=t), editable=False, addable=False),
    AdminSpec(
        "transcripts.message",
        lambda t: MessageFactory(conversation=ConversationFactory(tenant=t)),
        editable=False,
        addable=False,
    ),
    AdminSpec(
        "transcripts.turn",
        lambda t: TurnFactory(conversation=ConversationFactory(tenant=t)),
        editable=False,
        addable=False,
    ),
    AdminSpec(
        "transcripts.inboundevent",
        lambda t: InboundEventFactory(bot=BotFactory(tenant=t)),
        editable=False,
        addable=False,
    ),
    AdminSpec(
        "transcripts.llmcall",
        lambda t: LLMCallFactory(turn=TurnFactory(conversation=ConversationFactory(tenant=t))),
        editable=False,
        addable=False,
    ),
    AdminSpec(
        "feishu.outboundmessage",
        lambda t: OutboundMessageFactory(bot=BotFactory(tenant=t)),
        editable=False,
        addable=False,
    ),
    AdminSpec("audit.auditlog", lambda t: AuditLogFactory(tenant=t), editable=False, addable=False),
]
SPEC_IDS = [s.label for s in SPECS]


def make_rows(spec: AdminSpec, tenant: Tenant, n: int, *, member=None) -> list[Model]:
    """n more rows in `tenant`; for Tenant itself, n more tenants `member` owns."""
    if spec.label == "tenants.tenant":
        tenants = [TenantFactory() for _ in range(n)]
        for t in tenants:
            MembershipFactory(tenant=t, user=member)
        return tenants
    return [spec.make(tenant) for _ in range(n)]


@pytest.fixture(params=SPECS, ids=SPEC_IDS)
def spec(request) -> AdminSpec:
    return request.param


def result_rows(html: str) -> int:
    """Rows in a changelist's result table."""
    match = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', html, re.S)
    return match.group(1).count("<tr") if match else 0


def select_options(html: str, name: str) -> set[str]:
    """The non-empty option values of the <select name=...> on a page."""
    match = re.search(rf'<select name="{re.escape(name)}"[^>]*>(.*?)</select>', html, re.S)
    assert match, f"no <select name={name!r}> on the page"
    return {v for v in re.findall(r'<option value="([^"]*)"', match.group(1)) if v}


class _FormScraper(HTMLParser):
    """Collects what a browser would submit for the admin's main form (no JavaScript)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, list[str]] = {}
        self._select: str | None = None
        self._select_first: str | None = None
        self._select_chosen = False
        self._textarea: str | None = None
        self._text: list[str] = []

    def _add(self, name: str, value: str) -> None:
        self.data.setdefault(name, []).append(value)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and "__prefix__" not in name:
            kind = a.get("type", "text")
            if kind in ("submit", "button", "image", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self._add(name, a.get("value", "on" if kind == "checkbox" else "") or "")
        elif tag == "select" and name and "__prefix__" not in name:
            self._select, self._select_first, self._select_chosen = name, None, False
        elif tag == "option" and self._select:
            value = a.get("value", "")
            if self._select_first is None:
                self._select_first = value
            if "selected" in a:
                self._add(self._select, value)
                self._select_chosen = True
        elif tag == "textarea" and name and "__prefix__" not in name:
            self._textarea, self._text = name, []

    def handle_endtag(self, tag):
        if tag == "select" and self._select:
            if not self._select_chosen and self._select_first is not None:
                self._add(self._select, self._select_first)
            self._select = None
        elif tag == "textarea" and self._textarea:
            self._add(self._textarea, "".join(self._text).removeprefix("\n"))
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self._text.append(data)


def form_data(html: str, **overrides) -> dict:
    """The POST body of the page's form as a browser would send it, with some fields changed."""
    scraper = _FormScraper()
    scraper.feed(html)
    data = {k: v if len(v) > 1 else v[0] for k, v in scraper.data.items()}
    data.pop("csrfmiddlewaretoken", None)
    data.update(overrides)
    return data
