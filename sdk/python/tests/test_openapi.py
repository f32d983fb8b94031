"""The SDK follows the OpenAPI document (docs/openapi.yaml): every /v1 operation has a call,
and the result types carry exactly the REST fields of its schemas."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any, Dict, Set

import yaml

import runta
from runta import _operations
from server import REPO

DOC: Dict[str, Any] = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())


def names(cls: type) -> Set[str]:
    return {f.name for f in fields(cls)}


def props(schema: str) -> Set[str]:
    return set(DOC["components"]["schemas"][schema]["properties"])


def test_every_v1_operation_has_a_call() -> None:
    source = inspect.getsource(_operations)
    operations = [
        op["operationId"]
        for path, item in DOC["paths"].items()
        if path.startswith("/v1/")
        for method, op in item.items()
        if method != "parameters"
    ]
    assert len(operations) == 21
    assert [op for op in operations if f"# {op}" not in source] == []


def test_result_types_carry_the_rest_fields() -> None:
    for schema, cls in [
        ("Secret", runta.Secret),
        ("Rule", runta.Rule),
        ("RuntimeToken", runta.RuntimeToken),
        ("Tenant", runta.Tenant),
        ("ApiKey", runta.ApiKey),
        ("AuditEvent", runta.AuditEvent),
    ]:
        assert names(cls) == props(schema), schema
    assert names(runta.Injection) == set(
        DOC["components"]["schemas"]["Rule"]["properties"]["injection"]["properties"]
    )
    assert names(runta.CreatedRuntimeToken) == props("RuntimeToken") | {"token"}
    assert names(runta.CreatedApiKey) == props("ApiKey") | {"key"}
    created_tenant = DOC["paths"]["/v1/tenants"]["post"]["responses"]["201"]["content"]["application/json"][
        "schema"
    ]
    assert names(runta.CreatedTenant) == set(created_tenant["properties"])
