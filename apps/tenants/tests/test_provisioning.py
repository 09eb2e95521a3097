"""provision FILE.yaml: the DESIGN 4.4 shape, idempotence, all-or-nothing errors that name the entry."""

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection

from apps.agents.models import Agent
from apps.audit.models import AuditLog
from apps.bindings.models import Binding
from apps.bots.models import Bot
from apps.tenants.models import ApiKey, Membership, Tenant, hash_api_key
from apps.tenants.provisioning import provision_load
from tests.factories import BotFactory

pytestmark = pytest.mark.django_db

CONFIG = Path(__file__).resolve().parents[3] / "config"
ACME_ENV = {
    "ALICE_PASSWORD": "alice-password-1",
    "ACME_API_KEY": "acme-crm-key-0123456789abcdef",
    "LLM_API_KEY": "sk-llm-plaintext-key",
    "FEISHU_APP_SECRET": "feishu-app-secret-plaintext",
    "FEISHU_VERIFICATION_TOKEN": "feishu-verification-plaintext",
    "FEISHU_ENCRYPT_KEY": "feishu-encrypt-key-plaintext",
}
SECRETS = tuple(ACME_ENV.values())
MODELS = (Tenant, User, Membership, ApiKey, Agent, Bot, Binding, AuditLog)


@pytest.fixture
def acme_env(monkeypatch):
    for name, value in ACME_ENV.items():
        monkeypatch.setenv(name, value)


def provision(path, *args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("provision", str(path), *args, stdout=out)
    return out.getvalue()


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "provision.yaml"
    path.write_text(text)
    return path


def counts() -> dict:
    return {model.__name__: model.objects.count() for model in MODELS}


def stamps() -> dict:
    rows = {}
    for model in (Tenant, Membership, ApiKey, Agent, Bot, Binding):
        rows.update({(model.__name__, pk): ts for pk, ts in model.objects.values_list("pk", "updated_at")})
    rows.update({("User", pk): pw for pk, pw in User.objects.values_list("pk", "password")})
    return rows


def test_it_applies_the_design_shape_with_secrets_encrypted_and_the_key_hashed(acme_env, client):
    out = provision(CONFIG / "acme.example.yaml")

    tenant = Tenant.objects.get(slug="acme")
    assert tenant.name == "ACME Law"
    alice = User.objects.get(username="alice")
    assert alice.is_staff and not alice.is_superuser
    assert Membership.objects.get(tenant=tenant, user=alice).role == "owner"
    key = ApiKey.objects.get(tenant=tenant, name="crm")
    assert key.key_hash == hash_api_key(ACME_ENV["ACME_API_KEY"]) and key.prefix == "acme-crm"
    agent = Agent.objects.get(tenant=tenant, slug="case-assistant")
    assert (agent.api_key, agent.timeout, agent.tools) == (
        "sk-llm-plaintext-key",
        60,
        ["feishu.v1.bitable.search", "feishu.v1.doc.search"],
    )
    bot = Bot.objects.get(app_id="cli_acme_example", tenant=tenant)
    assert bot.app_secret == "feishu-app-secret-plaintext" and bot.mode == "webhook"
    bindings = Binding.objects.filter(bot=bot, agent=agent).order_by("chat_type")
    assert [(b.chat_type, b.require_mention) for b in bindings] == [("group", True), ("p2p", True)]
    assert "total: 8 created, 0 updated, 0 unchanged" in out
    audited = AuditLog.objects.filter(actor_label="provision", action="create")
    assert sorted(audited.values_list("object_type", flat=True)) == [
        "agents.Agent", "auth.User", "bindings.Binding", "bindings.Binding",
        "bots.Bot", "tenants.ApiKey", "tenants.Membership", "tenants.Tenant",
    ]  # fmt: skip
    assert set(audited.values_list("tenant", flat=True)) == {tenant.pk}
    assert AuditLog.objects.get(object_type="bots.Bot").changes["app_secret"] == "changed"

    # The admin logs in with the given password.
    assert client.login(username="alice", password=ACME_ENV["ALICE_PASSWORD"])
    # Nothing secret is at rest in plaintext, nor in the audit trail.
    with connection.cursor() as cursor:
        for table in ("bots_bot", "agents_agent", "tenants_apikey", "audit_auditlog", "auth_user"):
            cursor.execute(f"SELECT * FROM {table}")
            raw = repr(cursor.fetchall())
            assert not [s for s in SECRETS if s in raw], table


def test_it_changes_nothing_when_applied_twice(acme_env):
    provision(CONFIG / "acme.example.yaml")
    before_counts, before_stamps = counts(), stamps()

    out = provision(CONFIG / "acme.example.yaml")

    assert counts() == before_counts
    assert stamps() == before_stamps
    assert "total: 0 created, 0 updated, 8 unchanged" in out
    assert "already up to date" in out


def test_it_updates_only_what_changed_and_audits_it_without_the_secret(acme_env, monkeypatch):
    provision(CONFIG / "acme.example.yaml")
    agent_stamp = Agent.objects.get().updated_at
    bot_stamp = Bot.objects.get().updated_at
    audits = AuditLog.objects.count()

    monkeypatch.setenv("FEISHU_APP_SECRET", "rotated-app-secret")
    monkeypatch.setenv("ALICE_PASSWORD", "alice-password-2")
    out = provision(CONFIG / "acme.example.yaml")

    assert "total: 0 created, 2 updated, 6 unchanged" in out
    bot = Bot.objects.get()
    assert bot.app_secret == "rotated-app-secret" and bot.updated_at > bot_stamp
    assert Agent.objects.get().updated_at == agent_stamp
    assert User.objects.get(username="alice").check_password("alice-password-2")
    new_rows = AuditLog.objects.order_by("id")[audits:]
    assert {(row.actor_label, row.action, row.object_type): row.changes for row in new_rows} == {
        ("provision", "update", "bots.Bot"): {"app_secret": "changed"},
        ("provision", "update", "auth.User"): {"password": "changed"},
    }
    assert "rotated-app-secret" not in repr([row.changes for row in new_rows])
    assert "alice-password-2" not in repr([row.changes for row in new_rows])


def test_it_rejects_an_unknown_agent_in_a_binding_naming_it_and_applies_nothing(acme_env, tmp_path):
    text = (CONFIG / "acme.example.yaml").read_text()
    text = text.replace("agent: case-assistant, chat_type: group", "agent: x, chat_type: group")
    before = counts()

    with pytest.raises(CommandError, match=r"tenants\[0\]\.bindings\[1\]: unknown agent 'x'"):
        provision(write(tmp_path, text))

    assert counts() == before
    assert not Tenant.objects.filter(slug="acme").exists()


def test_it_names_an_unset_variable_and_where_it_is_used(acme_env, monkeypatch):
    monkeypatch.delenv("FEISHU_ENCRYPT_KEY")
    with pytest.raises(CommandError, match=r"tenants\[0\]\.bots\[0\]\.encrypt_key: environment variable "
                                           r"FEISHU_ENCRYPT_KEY is not set"):  # fmt: skip
        provision(CONFIG / "acme.example.yaml")
    assert counts()["Tenant"] == 0


def test_it_substitutes_after_parsing_so_values_cannot_inject_yaml(tmp_path):
    path = write(tmp_path, "tenants:\n  - {slug: t1, name: \"${NAME}\", instructions: '${MISSING:-fallback}'}\n")
    config = provision_load(path=path, environ={"NAME": "x\n  - slug: injected"})
    assert config == {"tenants": [{"slug": "t1", "name": "x\n  - slug: injected", "instructions": "fallback"}]}


URL = "base_url: 'http://localhost/v1'"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("agents: [{slug: a, model: m, base_url: not-a-url}]", r"agents\[0\]\.base_url: Enter a valid URL"),
        (f"agents: [{{slug: a, model: m, {URL}, colour: red}}]", r"agents\[0\]: unknown field 'colour'"),
        (f"agents: [{{slug: a, model: m, {URL}, timeout: soon}}]", r"agents\[0\]\.timeout: .soon. value must be an"),
        (f"agents: [{{slug: a, model: m, {URL}}}, {{slug: a, model: n, {URL}}}]",
         r"agents\[1\]: same slug as tenants\[0\]\.agents\[0\]"),
        ("admins: [{username: bob, password: short}]", r"admins\[0\]\.password: This password is too short"),
        ("admins: [{username: bob, password: long-enough-1, role: king}]", r"admins\[0\]\.role: must be one of"),
        ("api_keys: [{name: k, key: tiny}]", r"api_keys\[0\]\.key: must be at least 16"),
        ("bindings: [{bot: cli_nope, agent: a}]", r"bindings\[0\]: unknown bot 'cli_nope'"),
        ("bots: [{app_id: cli_1, app_secret: s, mode: carrier-pigeon}]", r"bots\[0\]\.mode: Value 'carrier-pigeon'"),
    ],
)  # fmt: skip
def test_it_rejects_a_bad_entry_with_a_message_naming_it(tmp_path, entry, message):
    path = write(tmp_path, f"tenants:\n  - slug: t1\n    name: T1\n    {entry}\n")
    with pytest.raises(CommandError, match=r"tenants\[0\]\." + message):
        provision(path)
    assert counts()["Tenant"] == 0


def test_it_refuses_to_take_over_another_tenants_bot(tmp_path):
    BotFactory(app_id="cli_taken", tenant__slug="globex")
    path = write(tmp_path, "tenants:\n  - slug: t1\n    name: T1\n    bots: [{app_id: cli_taken, app_secret: s}]\n")
    with pytest.raises(CommandError, match=r"tenants\[0\]\.bots\[0\]: bot 'cli_taken' belongs to tenant 'globex'"):
        provision(path)


def test_it_rejects_the_same_user_declared_twice_with_different_passwords(tmp_path):
    path = write(
        tmp_path,
        "tenants:\n"
        "  - {slug: t1, name: T1, admins: [{username: sam, password: password-one}]}\n"
        "  - {slug: t2, name: T2, admins: [{username: sam, password: password-two}]}\n",
    )
    with pytest.raises(CommandError, match=r"tenants\[1\]\.admins\[0\]: user 'sam' is also declared at tenants\[0\]"):
        provision(path)


def test_it_gives_one_user_roles_in_several_tenants(tmp_path, client):
    path = write(
        tmp_path,
        "tenants:\n"
        "  - {slug: t1, name: T1, admins: [{username: sam, password: password-one, role: owner}]}\n"
        "  - {slug: t2, name: T2, admins: [{username: sam, password: password-one, role: viewer}]}\n",
    )
    provision(path)
    assert dict(Membership.objects.filter(user__username="sam").values_list("tenant__slug", "role")) == {
        "t1": "owner",
        "t2": "viewer",
    }
    assert User.objects.filter(username="sam").count() == 1


def test_it_checks_without_applying_on_dry_run(acme_env):
    out = provision(CONFIG / "acme.example.yaml", "--dry-run")
    assert "total: 8 created" in out and "nothing was applied" in out
    assert counts()["Tenant"] == 0


def test_it_rejects_a_file_that_is_not_yaml(tmp_path):
    with pytest.raises(CommandError, match="not valid YAML"):
        provision(write(tmp_path, "tenants: [unclosed\n"))


def test_the_demo_file_applies_with_the_variables_bin_run_sets(monkeypatch, client):
    monkeypatch.setenv("OMNIAGENT_DEMO_PASSWORD", "demo-password-123")
    monkeypatch.setenv("OMNIAGENT_DEMO_API_KEY", "oa-demo-0123456789abcdef")
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:8100/v1")
    monkeypatch.setenv("LLM_API_KEY", "demo")
    monkeypatch.setenv("LLM_MODEL", "demo")
    provision(CONFIG / "demo.example.yaml")
    assert Agent.objects.get(tenant__slug="demo", slug="assistant").base_url == "http://127.0.0.1:8100/v1"
    assert client.login(username="admin", password="demo-password-123")


def test_it_rejects_two_bindings_with_one_identity(tmp_path):
    path = write(
        tmp_path,
        "tenants:\n"
        "  - slug: t1\n"
        "    name: T1\n"
        f"    agents: [{{slug: a, model: m, {URL}}}]\n"
        "    bots: [{app_id: cli_1, app_secret: s}]\n"
        "    bindings:\n"
        "      - {bot: cli_1, agent: a, priority: 1}\n"
        "      - {bot: cli_1, agent: a, chat_type: any, priority: 2}\n",
    )
    with pytest.raises(
        CommandError, match=r"tenants\[0\]\.bindings\[1\]: same bot/agent/chat_type/chat_id/user_open_id"
    ):
        provision(path)
    assert counts()["Binding"] == 0
