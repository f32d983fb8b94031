"""The asynchronous client: the same surface as Runta, awaited, against the real server."""

from __future__ import annotations

import asyncio

import pytest

import runta
from conftest import TenantInfo, fake_value
from runta import Injection, NewRule
from server import RuntaServer

pytestmark = pytest.mark.anyio


async def test_every_call(server: RuntaServer, tenant: TenantInfo) -> None:
    async with runta.AsyncRunta(server.url, tenant.api_key) as client:
        secret = await client.secrets.create(
            "openai-api-key", fake_value(), cache_ttl_secs=0, display_name="OpenAI"
        )
        assert (secret.cache_ttl_secs, secret.display_name) == (0, "OpenAI")
        assert await client.secrets.get("openai-api-key") == secret
        updated = await client.secrets.update("openai-api-key", value=fake_value("v2"), display_name=None)
        assert (updated.version, updated.display_name) == (2, None)

        # Concurrent creates on one client.
        await asyncio.gather(*(client.secrets.create(f"s-{i}", fake_value()) for i in range(12)))
        assert len(await client.secrets.list(page_size=5)) == 13

        worker = client.runtime("worker")
        rule = await worker.secrets.create_rule(
            "https://api.openai.com",
            path="/v1/*",
            injection=Injection("openai-api-key", header="Authorization", value="Bearer ${credential}"),
        )
        assert (rule.host_pattern, rule.path_pattern) == ("api.openai.com", "/v1/*")
        batch = await client.secrets.create_rules(
            [NewRule("builder", "api.example.com", Injection("s-1", param="k"))]
        )
        assert [r.id for r in await worker.secrets.list_rules()] == [rule.id]
        assert [r.id for r in await client.secrets.list_rules(page_size=1)] == [rule.id, batch[0].id]
        assert await client.secrets.get_rule(rule.id) == rule

        with pytest.raises(runta.ConflictError):
            await client.secrets.delete("openai-api-key")
        await worker.secrets.delete_rules(rule.id)
        await worker.secrets.delete_rule(batch[0].id)
        await client.secrets.delete("openai-api-key")
        with pytest.raises(runta.NotFoundError):
            await client.secrets.get("openai-api-key")

        token = await worker.tokens.create()
        assert token.token.startswith("runta_rt_")
        await worker.tokens.revoke(token.id)
        assert (await worker.tokens.list())[0].revoked_at is not None

        key = await client.api_keys.create("async")
        assert key.id in [k.id for k in await client.api_keys.list()]
        await client.api_keys.delete(key.id)

    async with runta.AsyncRunta(server.url, operator_token=server.operator_token) as operator:
        created = await operator.tenants.create("async-acme")
        assert "async-acme" in [t.name for t in await operator.tenants.list()]
        assert created.api_key.startswith("runta_ak_")


async def test_errors(server: RuntaServer) -> None:
    async with runta.AsyncRunta(server.url, "runta_ak_not_a_real_key") as client:
        with pytest.raises(runta.AuthenticationError):
            await client.secrets.list()
    async with runta.AsyncRunta(server.url, server.api_key) as client:
        with pytest.raises(runta.InvalidRequestError) as caught:
            await client.secrets.create("x", fake_value(), cache_ttl_secs=100000)
        assert "cache_ttl_secs" in caught.value.message
