"""Runtime tokens, tenants (operator token) and API keys."""

from __future__ import annotations

import pytest

import runta
from conftest import TenantInfo
from server import RuntaServer


def test_runtime_tokens(client: runta.Runta, server: RuntaServer, tenant: TenantInfo) -> None:
    tokens = client.runtime("worker").tokens
    first = tokens.create()
    second = tokens.create()
    assert isinstance(first, runta.CreatedRuntimeToken)
    assert first.token.startswith("runta_rt_") and first.revoked_at is None and first.runtime == "worker"
    assert first.token not in repr(first)

    listed = tokens.list(page_size=1)
    assert [t.id for t in listed] == [first.id, second.id]
    assert all(type(t) is runta.RuntimeToken for t in listed)

    tokens.revoke(first.id)
    status, body = server.rest("GET", "/v1/runtimes/worker/tokens", tenant.api_key)
    revoked = {t["id"]: t["revoked_at"] for t in body["data"]}
    assert revoked[first.id] is not None and revoked[second.id] is None
    assert client.runtime("builder").tokens.list() == []
    with pytest.raises(runta.NotFoundError):
        tokens.revoke("rtk_does_not_exist")


def test_tenants_with_the_operator_token(server: RuntaServer) -> None:
    with runta.Runta(server.url, operator_token=server.operator_token) as operator:
        created = operator.tenants.create("acme-sdk")
        assert created.tenant.name == "acme-sdk" and created.tenant.id.startswith("ten_")
        assert created.api_key.startswith("runta_ak_") and created.api_key not in repr(created)
        names = [t.name for t in operator.tenants.list(page_size=2)]
        assert "default" in names and "acme-sdk" in names
        with pytest.raises(runta.ConflictError) as caught:
            operator.tenants.create("acme-sdk")
        assert caught.value.code == "already_exists"

    # The new tenant's key works, and sees an empty tenant.
    with runta.Runta(server.url, created.api_key) as acme:
        assert acme.secrets.list() == []
        # An API key cannot manage tenants.
        with pytest.raises(runta.PermissionDeniedError) as denied:
            runta.Runta(server.url, created.api_key, operator_token=created.api_key).tenants.list()
        assert denied.value.status == 403


def test_api_keys(client: runta.Runta, server: RuntaServer, tenant: TenantInfo) -> None:
    created = client.api_keys.create("ci")
    assert created.name == "ci" and created.key.startswith("runta_ak_") and created.key not in repr(created)
    unnamed = client.api_keys.create()
    assert unnamed.name is None

    keys = client.api_keys.list(page_size=1)
    assert [k.id for k in keys][-2:] == [created.id, unnamed.id] and len(keys) == 3
    with runta.Runta(server.url, created.key) as ci:
        assert ci.secrets.list() == []

    client.api_keys.delete(unnamed.id)
    with runta.Runta(server.url, created.key) as ci:
        for key in ci.api_keys.list():
            if key.id != created.id:
                ci.api_keys.delete(key.id)
        with pytest.raises(runta.ConflictError) as last:
            ci.api_keys.delete(created.id)
        assert last.value.code == "last_api_key"
