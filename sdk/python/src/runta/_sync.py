"""The synchronous client, :class:`Runta`, and its resources.

Each method is one line over :mod:`runta._operations`; :mod:`runta._async` mirrors this file
method for method with ``await``.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Protocol, TypeVar, Union

import httpx

from . import _operations as ops
from ._http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, SyncTransport, Timeout
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

T = TypeVar("T")


class Transport(Protocol):
    """What resources need from a transport; the module-level default client implements it
    lazily (see :mod:`runta._default`)."""

    def call(self, call: ops.Call[T]) -> T: ...

    def collect(self, call: ops.ListCall[T]) -> List[T]: ...


class Secrets:
    """The tenant's secrets (``client.secrets``), and its rules tenant-wide."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(
        self,
        name: str,
        value: str,
        *,
        cache_ttl_secs: Optional[int] = None,
        display_name: Optional[str] = None,
    ) -> Secret:
        """Stores a secret. ``cache_ttl_secs`` (server default 300) is how long the gateway may
        keep the decrypted value in memory; 0 reads it for every request."""
        return self._t.call(ops.create_secret(name, value, cache_ttl_secs, display_name))

    def get(self, name: str) -> Secret:
        """The secret's metadata; the value is never returned."""
        return self._t.call(ops.get_secret(name))

    def list(self, *, page_size: Optional[int] = None) -> List[Secret]:
        """Every secret of the tenant, in creation order, fetching page after page."""
        return self._t.collect(ops.list_secrets(page_size))

    def update(
        self,
        name: str,
        *,
        value: Optional[str] = None,
        display_name: Union[str, None, _NotGiven] = NOT_GIVEN,
        cache_ttl_secs: Optional[int] = None,
    ) -> Secret:
        """Changes what is given: a new ``value`` makes a new version; ``display_name=None``
        clears the display name (leaving it out keeps it)."""
        return self._t.call(ops.update_secret(name, value, display_name, cache_ttl_secs))

    def delete(self, name: str) -> None:
        """Deletes the secret; :class:`~runta.ConflictError` while rules still use it."""
        self._t.call(ops.delete_secret(name))

    def list_rules(self, *, page_size: Optional[int] = None) -> List[Rule]:
        """Every rule of the tenant, all runtimes."""
        return self._t.collect(ops.list_rules(page_size))

    def get_rule(self, rule_id: str) -> Rule:
        return self._t.call(ops.get_rule(rule_id))

    def create_rules(self, rules: Iterable[Union[NewRule, Mapping[str, Any]]]) -> List[Rule]:
        """Creates several rules, of any runtimes, all or none (``POST /v1/rules/batch``).
        Entries are :class:`~runta.NewRule` or mappings in the rule-file shape, so the ``rules``
        list of a parsed YAML rule file can be passed as it is."""
        return self._t.call(ops.create_rules(rules))


class RuntimeSecrets:
    """The injection rules of one runtime (``client.runtime(name).secrets``)."""

    def __init__(self, transport: Transport, runtime: str) -> None:
        self._t = transport
        self._runtime = runtime

    def create_rule(self, host: str, *, path: Optional[str] = None, injection: Injection) -> Rule:
        """Adds a rule: requests of this runtime to ``host`` (and ``path``, a glob) get the
        injection. A URL is accepted as host and reduced to its host and port."""
        return self._t.call(ops.create_rule(self._runtime, host, path, injection))

    def list_rules(self, *, page_size: Optional[int] = None) -> List[Rule]:
        return self._t.collect(ops.list_runtime_rules(self._runtime, page_size))

    def delete_rule(self, rule_id: str) -> None:
        self._t.call(ops.delete_rule(rule_id))

    def delete_rules(self, *rule_ids: str) -> None:
        """Deletes each rule in turn; stops at the first that fails."""
        for rule_id in rule_ids:
            self.delete_rule(rule_id)


class RuntimeTokens:
    """The egress tokens of one runtime (``client.runtime(name).tokens``)."""

    def __init__(self, transport: Transport, runtime: str) -> None:
        self._t = transport
        self._runtime = runtime

    def create(self) -> CreatedRuntimeToken:
        """A new token; its ``token`` is shown this once."""
        return self._t.call(ops.create_token(self._runtime))

    def list(self, *, page_size: Optional[int] = None) -> List[RuntimeToken]:
        return self._t.collect(ops.list_tokens(self._runtime, page_size))

    def revoke(self, token_id: str) -> None:
        """Revokes the token at once; the record stays, with ``revoked_at``."""
        self._t.call(ops.revoke_token(token_id))


class Runtime:
    """A handle on one runtime: its rules and tokens. Making one sends nothing."""

    def __init__(self, transport: Transport, name: str) -> None:
        self.name = name
        self.secrets = RuntimeSecrets(transport, name)
        self.tokens = RuntimeTokens(transport, name)

    def __repr__(self) -> str:
        return f"Runtime({self.name!r})"


class Tenants:
    """Tenant management; needs the operator token, not an API key."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(self, name: str) -> CreatedTenant:
        """A new tenant and its first API key (``api_key``, shown this once)."""
        return self._t.call(ops.create_tenant(name))

    def list(self, *, page_size: Optional[int] = None) -> List[Tenant]:
        return self._t.collect(ops.list_tenants(page_size))


class ApiKeys:
    """The API keys of the caller's tenant."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(self, name: Optional[str] = None) -> CreatedApiKey:
        """A new key; its ``key`` is shown this once."""
        return self._t.call(ops.create_api_key(name))

    def list(self, *, page_size: Optional[int] = None) -> List[ApiKey]:
        return self._t.collect(ops.list_api_keys(page_size))

    def delete(self, key_id: str) -> None:
        """Deletes a key; :class:`~runta.ConflictError` for the tenant's last one."""
        self._t.call(ops.delete_api_key(key_id))


class Audit:
    """The audit trail of admin changes (``client.audit``): with the API key, the tenant's
    events; with ``operator=True`` (the operator token), every tenant's."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def list(
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
        """Every matching event, in ``seq`` order, fetching page after page. ``since`` (at or
        after) and ``until`` (before) are aware ``datetime`` objects or RFC 3339 strings;
        ``action`` (``secret.create``), ``target_kind`` (``secret``) and ``target_id`` filter
        on the server."""
        return self._t.collect(
            ops.list_audit_events(since, until, action, target_kind, target_id, operator, page_size)
        )


class Runta:
    """A client of the runta admin API.

    Settings resolve like the CLI's: the arguments, then ``RUNTA_API_URL`` / ``RUNTA_API_KEY``
    (``RUNTA_OPERATOR_TOKEN`` for tenant calls and ``audit.list(operator=True)``), then
    ``./runta-data/api-key`` (the data directory ``runta serve`` writes; ``RUNTA_DATA_DIR`` moves
    it) and ``http://127.0.0.1:8080``. ``timeout`` is in seconds per attempt; idempotent calls are
    retried up to ``max_retries`` times on connection failures and 503.
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        operator_token: Optional[str] = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        settings = Settings(api_url, api_key, operator_token)
        self._transport = SyncTransport(
            settings, timeout=timeout, max_retries=max_retries, http_client=http_client
        )
        self.secrets = Secrets(self._transport)
        self.tenants = Tenants(self._transport)
        self.api_keys = ApiKeys(self._transport)
        self.audit = Audit(self._transport)

    @property
    def api_url(self) -> str:
        return self._transport.api_url

    def runtime(self, name: str) -> Runtime:
        """A handle on the runtime ``name`` (nothing is sent until a call is made)."""
        return Runtime(self._transport, name)

    def ca_certificate(self) -> str:
        """The server's HTTPS interception CA certificate (PEM text), for runtimes to trust.
        Public: no API key is read or sent. :class:`~runta.NotFoundError`
        (``interception_disabled``) when the server has no CA."""
        return self._transport.call(ops.get_ca_certificate())

    def close(self) -> None:
        """Closes the connection pool (not an ``http_client`` passed in)."""
        self._transport.close()

    def __enter__(self) -> Runta:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runta(api_url={self.api_url!r})"
