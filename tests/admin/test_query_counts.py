"""Admin changelists cost the same number of queries for 2 rows as for 50 (no N+1), for every model."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.tenants.models import Membership
from tests.admin.conftest import AdminSpec, make_rows, result_rows
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
MAX_QUERIES = 14  # session, user, memberships, counts, rows, filter choices; never one per row


def _changelist_queries(client, spec: AdminSpec, expected_rows: int) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(spec.url("changelist"))
    assert response.status_code == 200
    assert result_rows(response.content.decode()) == expected_rows
    return len(queries)


@pytest.mark.parametrize("persona", ["owner_a", "superuser"])
def test_it_lists_fifty_rows_in_a_bounded_number_of_queries(
    client, personas, spec: AdminSpec, persona, django_assert_max_num_queries
):
    user = UserFactory(is_superuser=True) if persona == "superuser" else personas.owner_a
    client.force_login(user)
    model = type(make_rows(spec, personas.tenant_a, 1, member=personas.owner_a)[0])

    def visible() -> int:
        # The owner sees tenant A's rows (for tenants: the ones they are a member of); a superuser all.
        if persona == "superuser":
            return model.objects.count()
        if spec.label == "tenants.tenant":
            return Membership.objects.filter(user=personas.owner_a).count()
        return model.objects.filter(tenant=personas.tenant_a).count()

    make_rows(spec, personas.tenant_a, 1, member=personas.owner_a)
    few = _changelist_queries(client, spec, visible())

    make_rows(spec, personas.tenant_a, 48, member=personas.owner_a)
    assert visible() >= 50
    with django_assert_max_num_queries(MAX_QUERIES):
        many = _changelist_queries(client, spec, visible())
    assert many == few
