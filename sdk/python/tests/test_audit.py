"""The audit trail (``client.audit.list``) against the real server: a change made through the SDK
is recorded once, with the API key's id as actor and the request's ``x-request-id``; the filters
narrow on the server; the operator token sees every tenant; no event holds a secret value."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import List, Tuple

import httpx
import pytest

import runta
from conftest import TenantInfo, fake_value, new_tenant
from server import RuntaServer

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def recording_client(server: RuntaServer, api_key: str, seen: List[Tuple[str, str, str]]) -> runta.Runta:
    """A client whose answers' ``x-request-id`` headers are recorded as (method, path, id)."""

    def record(response: httpx.Response) -> None:
        request = response.request
        seen.append((request.method, request.url.path, response.headers.get("x-request-id", "")))

    http = httpx.Client(event_hooks={"response": [record]})
    return runta.Runta(server.url, api_key, http_client=http)


def test_a_change_is_recorded_once_with_actor_and_request_id(server: RuntaServer, tenant: TenantInfo) -> None:
    value = fake_value("audit")
    new_value = fake_value("audit-v2")
    seen: List[Tuple[str, str, str]] = []
    with recording_client(server, tenant.api_key, seen) as client:
        secret = client.secrets.create("audited", value, display_name="Audited")
        [(method, path, request_id)] = seen
        assert (method, path) == ("POST", "/v1/secrets") and request_id
        [key] = client.api_keys.list()

        events = client.audit.list()
        assert all(type(e) is runta.AuditEvent for e in events)
        created = [e for e in events if e.action == "secret.create" and e.target_id == secret.id]
        assert len(created) == 1, events
        event = created[0]
        assert event.actor == key.id and event.actor.startswith("key_")
        assert event.request_id == request_id
        assert (event.target_kind, event.target_name, event.outcome) == ("secret", "audited", "ok")
        assert event.id.startswith("aud_") and event.seq >= 1
        assert HEX64.match(event.hash) and HEX64.match(event.prev_hash)
        # The tenant's key sees its tenant's events only, in seq order.
        assert len({e.tenant_id for e in events}) == 1 and event.tenant_id is not None
        assert [e.seq for e in events] == sorted(e.seq for e in events)

        # Every page: a page of one gives the same list.
        assert client.audit.list(page_size=1) == events

        # Filters, answered by the server.
        assert client.audit.list(action="secret.create") == [event]
        assert client.audit.list(target_id=secret.id) == [event]
        assert client.audit.list(target_kind="secret", action="secret.create", target_id=secret.id) == [event]
        assert client.audit.list(action="secret.delete") == []
        at = datetime.strptime(event.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert event in client.audit.list(since=at)
        assert event in client.audit.list(since=event.time, until=at + timedelta(seconds=1))
        assert event not in client.audit.list(until=at)  # `until` is exclusive
        assert event not in client.audit.list(since=at + timedelta(milliseconds=1))
        local = at.astimezone(timezone(timedelta(hours=5, minutes=30)))
        assert client.audit.list(since=local, target_id=secret.id) == [event]
        with pytest.raises(runta.InvalidRequestError, match="since: a datetime needs a timezone"):
            client.audit.list(since=datetime(2026, 1, 1))
        with pytest.raises(runta.InvalidRequestError) as bad:
            client.audit.list(action="secret.frobnicate")
        assert bad.value.status == 400 and "action" in bad.value.message
        with pytest.raises(runta.InvalidRequestError):
            client.audit.list(page_size=0)

        # A new value is recorded too, and no event holds either value.
        client.secrets.update("audited", value=new_value)
        (method, path, update_id) = seen[-1]
        assert (method, path) == ("PUT", "/v1/secrets/audited")
        [updated] = client.audit.list(action="secret.update_value")
        assert updated.target_id == secret.id and updated.request_id == update_id
        status, raw = server.rest("GET", "/v1/audit-events?limit=1000", server.operator_token)
        assert status == 200
        everything = json.dumps(raw) + repr(client.audit.list())
        assert value not in everything and new_value not in everything
        assert tenant.api_key not in everything and server.operator_token not in everything

    # The operator sees the same event, and other tenants' events; another tenant's key does not.
    with runta.Runta(server.url, operator_token=server.operator_token) as operator:
        assert operator.audit.list(operator=True, target_id=secret.id, action="secret.create") == [event]
        tenants = {e.tenant_id for e in operator.audit.list(operator=True)}
        assert event.tenant_id in tenants and len(tenants) > 1
    other = new_tenant(server)
    with runta.Runta(server.url, other.api_key) as stranger:
        assert stranger.audit.list(target_id=secret.id) == []
        assert {e.target_name for e in stranger.audit.list(target_kind="tenant")} == {other.name}


def test_module_level_audit(server: RuntaServer, tenant: TenantInfo) -> None:
    from runta import _default

    with runta.Runta(server.url, tenant.api_key) as client:
        secret = client.secrets.create("audited-too", fake_value())
    previous = _default._client
    client = runta.configure(server.url, tenant.api_key)
    try:
        [event] = runta.audit.list(target_id=secret.id)
        assert event.action == "secret.create" and event.target_name == "audited-too"
    finally:
        _default._client = previous
        client.close()


@pytest.mark.anyio
async def test_async_audit(server: RuntaServer, tenant: TenantInfo) -> None:
    async with runta.AsyncRunta(server.url, tenant.api_key, operator_token=server.operator_token) as client:
        secret = await client.secrets.create("audited-async", fake_value())
        [event] = await client.audit.list(target_id=secret.id, page_size=1)
        assert (event.action, event.target_name) == ("secret.create", "audited-async")
        assert await client.audit.list(target_id=secret.id, operator=True) == [event]
        assert await client.audit.list(since=datetime.now(timezone.utc) + timedelta(hours=1)) == []
