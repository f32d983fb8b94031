"""Secrets through the synchronous client, checked against the server's REST answers."""

from __future__ import annotations

from typing import List

import httpx

import runta
from conftest import TenantInfo, fake_value
from server import RuntaServer


def test_create_get_update_delete(client: runta.Runta, server: RuntaServer, tenant: TenantInfo) -> None:
    created = client.secrets.create("github-token", fake_value(), cache_ttl_secs=60, display_name="GitHub")
    assert isinstance(created, runta.Secret)
    assert created.id.startswith("sec_")
    assert (created.name, created.display_name, created.cache_ttl_secs, created.version) == (
        "github-token",
        "GitHub",
        60,
        1,
    )
    assert client.secrets.get("github-token") == created

    default_ttl = client.secrets.create("internal-api", fake_value())
    assert default_ttl.cache_ttl_secs == 300 and default_ttl.display_name is None

    bumped = client.secrets.update("github-token", value=fake_value("v2"))
    assert bumped.version == 2 and bumped.display_name == "GitHub" and bumped.cache_ttl_secs == 60

    renamed = client.secrets.update("github-token", display_name="GitHub CI", cache_ttl_secs=0)
    assert (renamed.version, renamed.display_name, renamed.cache_ttl_secs) == (2, "GitHub CI", 0)

    cleared = client.secrets.update("github-token", display_name=None)
    assert cleared.display_name is None and cleared.version == 2
    status, body = server.rest("GET", "/v1/secrets/github-token", tenant.api_key)
    assert status == 200 and body["display_name"] is None and body["cache_ttl_secs"] == 0

    assert [s.name for s in client.secrets.list()] == ["github-token", "internal-api"]
    client.secrets.delete("github-token")
    assert server.rest("GET", "/v1/secrets/github-token", tenant.api_key)[0] == 404
    assert [s.name for s in client.secrets.list()] == ["internal-api"]


def test_list_follows_every_page(server: RuntaServer, tenant: TenantInfo) -> None:
    """The server's default page is 100 items: 105 secrets take two requests, in creation order;
    with ``page_size=20`` six."""
    requests: List[str] = []

    def count(request: httpx.Request) -> None:
        if request.method == "GET":
            requests.append(str(request.url))

    http = httpx.Client(event_hooks={"request": [count]})
    with runta.Runta(server.url, tenant.api_key, http_client=http) as client:
        names = [f"s-{i:03d}" for i in range(105)]
        for name in names:
            client.secrets.create(name, fake_value(name))

        listed = client.secrets.list()
        assert [s.name for s in listed] == names
        assert len(requests) == 2 and "cursor=" in requests[1]

        requests.clear()
        assert [s.name for s in client.secrets.list(page_size=20)] == names
        assert len(requests) == 6 and all("limit=20" in url for url in requests)
    http.close()
