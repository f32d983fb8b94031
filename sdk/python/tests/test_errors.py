"""Every class of error, from the real server (and from no server at all)."""

from __future__ import annotations

import pytest

import runta
from conftest import TenantInfo, fake_value
from runta import Injection
from server import RuntaServer


def test_not_found(client: runta.Runta) -> None:
    with pytest.raises(runta.NotFoundError) as caught:
        client.secrets.get("missing")
    err = caught.value
    assert (err.status, err.code) == (404, "not_found") and "missing" in err.message
    assert isinstance(err, runta.RuntaError)
    with pytest.raises(runta.NotFoundError):
        client.runtime("worker").secrets.delete_rule("rule_missing")


def test_conflict_secret_in_use_and_duplicate(client: runta.Runta) -> None:
    client.secrets.create("openai-api-key", fake_value())
    rule = client.runtime("worker").secrets.create_rule(
        "api.openai.com", injection=Injection("openai-api-key", header="Authorization")
    )
    with pytest.raises(runta.ConflictError) as in_use:
        client.secrets.delete("openai-api-key")
    assert (in_use.value.status, in_use.value.code) == (409, "secret_in_use")
    assert rule.id in in_use.value.message

    with pytest.raises(runta.ConflictError) as duplicate:
        client.secrets.create("openai-api-key", fake_value())
    assert duplicate.value.code == "already_exists"


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda c: c.secrets.create("Bad Name", fake_value()), "name"),
        (lambda c: c.secrets.create("ok", fake_value(), cache_ttl_secs=-1), "cache_ttl_secs"),
        (
            lambda c: c.runtime("worker").secrets.create_rule("*", injection=Injection("ok", header="X")),
            "host",
        ),
        (
            lambda c: c.runtime("worker").secrets.create_rule(
                "a.example.com", injection=Injection("nope", header="X")
            ),
            "injection.credential",
        ),
        (
            lambda c: c.secrets.create_rules(
                [{"runtime": "w", "host": "a.example.com", "credential": "x", "inject": {}, "extra": 1}]
            ),
            "extra",
        ),
    ],
    ids=["name", "ttl", "host", "credential", "unknown-field"],
)
def test_invalid(client: runta.Runta, call, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(runta.InvalidRequestError) as caught:
        call(client)
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert field in caught.value.message


def test_unauthenticated_with_a_bad_key(server: RuntaServer) -> None:
    with runta.Runta(server.url, "runta_ak_not_a_real_key") as client:
        with pytest.raises(runta.AuthenticationError) as caught:
            client.secrets.list()
    assert (caught.value.status, caught.value.code) == (401, "unauthenticated")


def test_unavailable_when_the_server_is_stopped(own_server: RuntaServer) -> None:
    url, key = own_server.url, own_server.api_key
    own_server.stop()
    with runta.Runta(url, key, max_retries=1) as client:
        with pytest.raises(runta.UnavailableError) as caught:
            client.secrets.list()
    err = caught.value
    assert (
        isinstance(err, runta.APIConnectionError) and err.status is None and err.code == "connection_failed"
    )
    assert url in err.message


def test_timeout_when_the_server_hangs(own_server: RuntaServer) -> None:
    """A paused (SIGSTOP) server accepts connections and never answers."""
    with runta.Runta(own_server.url, own_server.api_key, timeout=0.5, max_retries=0) as client:
        client.secrets.list()  # connected once while it answers
        own_server.pause()
        try:
            with pytest.raises(runta.APITimeoutError) as caught:
                client.secrets.list()
        finally:
            own_server.resume()
        assert isinstance(caught.value, runta.UnavailableError) and caught.value.code == "timeout"
        assert client.secrets.list() == []


def test_tenant_isolation(client: runta.Runta, server: RuntaServer, tenant: TenantInfo) -> None:
    client.secrets.create("mine", fake_value())
    with runta.Runta(server.url, server.api_key) as default_tenant:
        with pytest.raises(runta.NotFoundError):
            default_tenant.secrets.get("mine")
