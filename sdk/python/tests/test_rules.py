"""Injection rules: per runtime, tenant-wide, in batches, and the Injection type's own check."""

from __future__ import annotations

import pytest

import runta
from conftest import TenantInfo, fake_value
from runta import Injection, NewRule
from server import RuntaServer


@pytest.fixture
def openai(client: runta.Runta) -> runta.Secret:
    return client.secrets.create("openai-api-key", fake_value(), cache_ttl_secs=0)


def test_create_list_get_delete(
    client: runta.Runta, server: RuntaServer, tenant: TenantInfo, openai: runta.Secret
) -> None:
    worker = client.runtime("worker")
    header = worker.secrets.create_rule(
        "https://api.openai.com",
        path="/v1/*",
        injection=Injection("openai-api-key", header="Authorization", value="Bearer ${credential}"),
    )
    assert isinstance(header, runta.Rule) and header.id.startswith("rule_")
    assert (header.runtime, header.host_pattern, header.path_pattern) == ("worker", "api.openai.com", "/v1/*")
    assert header.injection == Injection(
        "openai-api-key", header="Authorization", value="Bearer ${credential}"
    )

    param = worker.secrets.create_rule(
        "*.example.com:8443", injection=Injection("openai-api-key", param="key")
    )
    assert param.path_pattern is None
    assert (param.injection.header, param.injection.param, param.injection.value) == (
        None,
        "key",
        "${credential}",
    )

    other = client.runtime("builder").secrets.create_rule(
        "api.github.com", injection=Injection("openai-api-key", header="X-Token")
    )

    assert [r.id for r in worker.secrets.list_rules()] == [header.id, param.id]
    assert [r.id for r in client.runtime("builder").secrets.list_rules()] == [other.id]
    assert [r.id for r in client.secrets.list_rules()] == [header.id, param.id, other.id]
    assert client.secrets.get_rule(param.id) == param

    status, body = server.rest("GET", f"/v1/rules/{param.id}", tenant.api_key)
    assert status == 200 and body["host_pattern"] == "*.example.com:8443"

    worker.secrets.delete_rule(header.id)
    worker.secrets.delete_rules(param.id, other.id)
    assert server.rest("GET", "/v1/rules", tenant.api_key)[1]["data"] == []


def test_rule_lists_follow_every_page(client: runta.Runta, openai: runta.Secret) -> None:
    worker = client.runtime("worker")
    ids = [
        worker.secrets.create_rule(
            f"api{i}.example.com", injection=Injection("openai-api-key", header="X-Key")
        ).id
        for i in range(7)
    ]
    assert [r.id for r in worker.secrets.list_rules(page_size=2)] == ids
    assert [r.id for r in client.secrets.list_rules(page_size=3)] == ids


def test_batch_from_the_rule_file_shape(
    client: runta.Runta, server: RuntaServer, tenant: TenantInfo, openai: runta.Secret
) -> None:
    # What a parsed YAML rule file holds under `rules:`, plus the typed form.
    from_file = {
        "runtime": "worker",
        "host": "api.openai.com",
        "path": "/v1/*",
        "credential": "openai-api-key",
        "inject": {"header": "Authorization", "value": "Bearer ${credential}"},
    }
    typed = NewRule("batcher", "api.example.com", Injection("openai-api-key", param="token"))
    created = client.secrets.create_rules([from_file, typed])
    assert [(r.runtime, r.host_pattern, r.path_pattern) for r in created] == [
        ("worker", "api.openai.com", "/v1/*"),
        ("batcher", "api.example.com", None),
    ]
    assert created[1].injection.param == "token"
    assert len(server.rest("GET", "/v1/rules", tenant.api_key)[1]["data"]) == 2


def test_batch_is_all_or_none(
    client: runta.Runta, server: RuntaServer, tenant: TenantInfo, openai: runta.Secret
) -> None:
    good = NewRule("worker", "api.openai.com", Injection("openai-api-key", header="Authorization"))
    bad = NewRule("worker", "api.example.com", Injection("no-such-secret", header="X-Key"))
    with pytest.raises(runta.InvalidRequestError) as caught:
        client.secrets.create_rules([good, bad])
    assert caught.value.status == 400 and "rules[1].credential" in caught.value.message
    assert server.rest("GET", "/v1/rules", tenant.api_key)[1]["data"] == []


@pytest.mark.parametrize(
    "kwargs",
    [dict(header="Authorization", param="key"), dict()],
    ids=["both", "neither"],
)
def test_injection_needs_exactly_one_target_before_any_request(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(runta.InvalidRequestError) as caught:
        Injection("openai-api-key", **kwargs)
    assert caught.value.status is None and isinstance(caught.value, ValueError)


def test_invalid_injection_never_reaches_the_network() -> None:
    """A client pointed at a closed port raises the validation error, not a connection error."""
    with runta.Runta("http://127.0.0.1:9", "runta_ak_unused", max_retries=0) as client:
        with pytest.raises(runta.InvalidRequestError):
            client.runtime("worker").secrets.create_rule(
                "api.openai.com", injection=Injection("x", header="A", param="b")
            )
        with pytest.raises(runta.InvalidRequestError):
            client.secrets.list(page_size=0)
