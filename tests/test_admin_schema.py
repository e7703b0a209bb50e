"""schemathesis against the admin API's own OpenAPI document, over real HTTP: every operation,
with generated valid and invalid input, answers as documented and never with a 5xx."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import APIOperation, Case

from streamq import admin
from tests.conftest import ADMIN_TOKEN, AdminServer

# The document the server serves (test_admin checks that it serves this one).
schema = schemathesis.openapi.from_dict(admin.openapi_document())


@schema.parametrize()
@settings(
    max_examples=20,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_keeps_to_its_openapi_document(
    case: Case[APIOperation[Any, Any, Any, Any]], admin_server: AdminServer
) -> None:
    case.call_and_validate(
        base_url=admin_server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
