"""The asynchronous client, :class:`AsyncRunta`: the surface of :class:`runta.Runta`, awaited.

Mirrors :mod:`runta._sync` method for method; see there for what each call does.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Union

import httpx

from . import _operations as ops
from ._http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, AsyncTransport, Timeout
from ._operations import NOT_GIVEN, TimeFilter, _NotGiven
from ._settings import Settings
from .models import (
    ApiKey,
    AuditEvent,
    CreatedApiKey,
    CreatedRuntimeToken,
    CreatedTenant,
    Injection,
    NewRule,
    Rule,
    RuntimeToken,
    Secret,
    Tenant,
)


class AsyncSecrets:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        name: str,
        value: str,
        *,
        cache_ttl_secs: Optional[int] = None,
        display_name: Optional[str] = None,
    ) -> Secret:
        return await self._t.call(ops.create_secret(name, value, cache_ttl_secs, display_name))

    async def get(self, name: str) -> Secret:
        return await self._t.call(ops.get_secret(name))

    async def list(self, *, page_size: Optional[int] = None) -> List[Secret]:
        return await self._t.collect(ops.list_secrets(page_size))

    async def update(
        self,
        name: str,
        *,
        value: Optional[str] = None,
        display_name: Union[str, None, _NotGiven] = NOT_GIVEN,
        cache_ttl_secs: Optional[int] = None,
    ) -> Secret:
        return await self._t.call(ops.update_secret(name, value, display_name, cache_ttl_secs))

    async def delete(self, name: str) -> None:
        await self._t.call(ops.delete_secret(name))

    async def list_rules(self, *, page_size: Optional[int] = None) -> List[Rule]:
        return await self._t.collect(ops.list_rules(page_size))

    async def get_rule(self, rule_id: str) -> Rule:
        return await self._t.call(ops.get_rule(rule_id))

    async def create_rules(self, rules: Iterable[Union[NewRule, Mapping[str, Any]]]) -> List[Rule]:
        return await self._t.call(ops.create_rules(rules))


class AsyncRuntimeSecrets:
    def __init__(self, transport: AsyncTransport, runtime: str) -> None:
        self._t = transport
        self._runtime = runtime

    async def create_rule(self, host: str, *, path: Optional[str] = None, injection: Injection) -> Rule:
        return await self._t.call(ops.create_rule(self._runtime, host, path, injection))

    async def list_rules(self, *, page_size: Optional[int] = None) -> List[Rule]:
        return await self._t.collect(ops.list_runtime_rules(self._runtime, page_size))

    async def delete_rule(self, rule_id: str) -> None:
        await self._t.call(ops.delete_rule(rule_id))

    async def delete_rules(self, *rule_ids: str) -> None:
        for rule_id in rule_ids:
            await self.delete_rule(rule_id)


class AsyncRuntimeTokens:
    def __init__(self, transport: AsyncTransport, runtime: str) -> None:
        self._t = transport
        self._runtime = runtime

    async def create(self) -> CreatedRuntimeToken:
        return await self._t.call(ops.create_token(self._runtime))

    async def list(self, *, page_size: Optional[int] = None) -> List[RuntimeToken]:
        return await self._t.collect(ops.list_tokens(self._runtime, page_size))

    async def revoke(self, token_id: str) -> None:
        await self._t.call(ops.revoke_token(token_id))


class AsyncRuntime:
    def __init__(self, transport: AsyncTransport, name: str) -> None:
        self.name = name
        self.secrets = AsyncRuntimeSecrets(transport, name)
        self.tokens = AsyncRuntimeTokens(transport, name)

    def __repr__(self) -> str:
        return f"AsyncRuntime({self.name!r})"


class AsyncTenants:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(self, name: str) -> CreatedTenant:
        return await self._t.call(ops.create_tenant(name))

    async def list(self, *, page_size: Optional[int] = None) -> List[Tenant]:
        return await self._t.collect(ops.list_tenants(page_size))


class AsyncApiKeys:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(self, name: Optional[str] = None) -> CreatedApiKey:
        return await self._t.call(ops.create_api_key(name))

    async def list(self, *, page_size: Optional[int] = None) -> List[ApiKey]:
        return await self._t.collect(ops.list_api_keys(page_size))

    async def delete(self, key_id: str) -> None:
        await self._t.call(ops.delete_api_key(key_id))


class AsyncAudit:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def list(
        self,
        *,
        since: TimeFilter = None,
        until: TimeFilter = None,
        action: Optional[str] = None,
        target_kind: Optional[str] = None,
        target_id: Optional[str] = None,
        operator: bool = False,
        page_size: Optional[int] = None,
    ) -> List[AuditEvent]:
        return await self._t.collect(
            ops.list_audit_events(since, until, action, target_kind, target_id, operator, page_size)
        )


class AsyncRunta:
    """The asynchronous client (asyncio); settings as for :class:`runta.Runta`."""

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        operator_token: Optional[str] = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        settings = Settings(api_url, api_key, operator_token)
        self._transport = AsyncTransport(
            settings, timeout=timeout, max_retries=max_retries, http_client=http_client
        )
        self.secrets = AsyncSecrets(self._transport)
        self.tenants = AsyncTenants(self._transport)
        self.api_keys = AsyncApiKeys(self._transport)
        self.audit = AsyncAudit(self._transport)

    @property
    def api_url(self) -> str:
        return self._transport.api_url

    def runtime(self, name: str) -> AsyncRuntime:
        return AsyncRuntime(self._transport, name)

    async def ca_certificate(self) -> str:
        return await self._transport.call(ops.get_ca_certificate())

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncRunta:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncRunta(api_url={self.api_url!r})"
