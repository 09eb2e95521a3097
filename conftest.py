"""Suite-wide fixtures: clean cache per test, tenant personas (A owner, A viewer, B staff)."""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache

from apps.tenants.models import Role, Tenant
from tests.factories import MembershipFactory, TenantFactory, UserFactory

# The fake Feishu Open API and the fake LLM, for every test module.
pytest_plugins = ["tests.fakes.fixtures", "tests.fakes.llm_fixtures"]


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _turn_threads_end_with_their_test():
    """The in-process runner's threads must not outlive the test that started them: a turn still
    running at teardown writes into the database the next (transactional) test starts from."""
    yield
    from apps.runtime import dispatch

    for pool in (dispatch._pool, dispatch._stop_pool):
        if pool.cache_info().currsize:
            pool().shutdown(wait=True)
            pool.cache_clear()


@dataclass
class Personas:
    tenant_a: Tenant
    tenant_b: Tenant
    owner_a: User
    viewer_a: User
    staff_b: User


@pytest.fixture
def personas(db) -> Personas:
    tenant_a, tenant_b = TenantFactory(slug="acme", name="ACME"), TenantFactory(slug="globex", name="Globex")
    owner_a = MembershipFactory(tenant=tenant_a, role=Role.OWNER, user=UserFactory(username="alice")).user
    viewer_a = MembershipFactory(tenant=tenant_a, role=Role.VIEWER, user=UserFactory(username="victor")).user
    staff_b = MembershipFactory(tenant=tenant_b, role=Role.OWNER, user=UserFactory(username="bob")).user
    return Personas(tenant_a, tenant_b, owner_a, viewer_a, staff_b)
