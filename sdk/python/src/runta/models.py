"""Typed results of the admin API, with the REST field names (``rule.host_pattern``,
``secret.cache_ttl_secs``), so what the OpenAPI document and the CLI's JSON output say applies
here unchanged.

Timestamps stay the RFC 3339 strings the server sends (UTC, milliseconds). Fields the server
adds later are ignored rather than breaking older SDKs. Credentials the server shows once (a new
API key, a runtime token) are excluded from ``repr`` so they do not end up in logs by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from .errors import InvalidRequestError

CREDENTIAL_PLACEHOLDER = "${credential}"


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _opt_str(data: Mapping[str, Any], key: str) -> Optional[str]:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) else 0


@dataclass(frozen=True)
class Injection:
    """What a rule injects: the secret ``credential`` names, as the header ``header`` or the
    query parameter ``param`` (exactly one), with the value ``value`` in which
    ``${credential}`` stands for the secret's value.

    The exactly-one check happens here, at construction, so a wrong injection fails before any
    request is made. The same type comes back in :attr:`Rule.injection`.
    """

    credential: str
    header: Optional[str] = None
    param: Optional[str] = None
    value: str = CREDENTIAL_PLACEHOLDER

    def __post_init__(self) -> None:
        if (self.header is None) == (self.param is None):
            raise InvalidRequestError(
                "injection: give exactly one of header and param", code="invalid_request"
            )

    def to_json(self) -> Dict[str, Any]:
        """The request shape (``injection`` of ``POST /v1/runtimes/{runtime}/rules``)."""
        return {
            "credential": self.credential,
            "header": self.header,
            "param": self.param,
            "value": self.value,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Injection:
        return cls(
            credential=_str(data, "credential"),
            header=_opt_str(data, "header"),
            param=_opt_str(data, "param"),
            value=_opt_str(data, "value") or CREDENTIAL_PLACEHOLDER,
        )


@dataclass(frozen=True)
class Secret:
    """A secret's metadata. The API never returns the value, so neither does this type."""

    id: str
    name: str
    display_name: Optional[str]
    cache_ttl_secs: int
    version: int
    created_at: str
    updated_at: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Secret:
        return cls(
            id=_str(data, "id"),
            name=_str(data, "name"),
            display_name=_opt_str(data, "display_name"),
            cache_ttl_secs=_int(data, "cache_ttl_secs"),
            version=_int(data, "version"),
            created_at=_str(data, "created_at"),
            updated_at=_str(data, "updated_at"),
        )


@dataclass(frozen=True)
class Rule:
    """An injection rule of one runtime. ``host_pattern`` and ``path_pattern`` are the stored
    normal forms (``https://api.openai.com`` is stored as ``api.openai.com``)."""

    id: str
    runtime: str
    host_pattern: str
    path_pattern: Optional[str]
    injection: Injection
    created_at: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rule:
        injection = data.get("injection")
        return cls(
            id=_str(data, "id"),
            runtime=_str(data, "runtime"),
            host_pattern=_str(data, "host_pattern"),
            path_pattern=_opt_str(data, "path_pattern"),
            injection=Injection.from_json(injection if isinstance(injection, Mapping) else {}),
            created_at=_str(data, "created_at"),
        )


@dataclass(frozen=True)
class NewRule:
    """One rule of a batch (``POST /v1/rules/batch``): the rule-file entry
    ``{runtime, host, path, credential, inject: {header|param, value}}`` with the injection as an
    :class:`Injection`. Plain mappings in the rule-file shape are accepted as well."""

    runtime: str
    host: str
    injection: Injection
    path: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return {
            "runtime": self.runtime,
            "host": self.host,
            "path": self.path,
            "credential": self.injection.credential,
            "inject": {
                "header": self.injection.header,
                "param": self.injection.param,
                "value": self.injection.value,
            },
        }


@dataclass(frozen=True)
class RuntimeToken:
    """A runtime's egress token record; the token itself is only in :class:`CreatedRuntimeToken`."""

    id: str
    runtime: str
    created_at: str
    revoked_at: Optional[str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RuntimeToken:
        return cls(
            id=_str(data, "id"),
            runtime=_str(data, "runtime"),
            created_at=_str(data, "created_at"),
            revoked_at=_opt_str(data, "revoked_at"),
        )


@dataclass(frozen=True)
class CreatedRuntimeToken(RuntimeToken):
    """A new runtime token: ``token`` is shown this once (use it as the proxy credentials,
    ``HTTP_PROXY=http://<token>@gateway:10000``)."""

    token: str = field(repr=False, default="")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CreatedRuntimeToken:
        base = RuntimeToken.from_json(data)
        return cls(
            id=base.id,
            runtime=base.runtime,
            created_at=base.created_at,
            revoked_at=base.revoked_at,
            token=_str(data, "token"),
        )


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tenant:
        return cls(id=_str(data, "id"), name=_str(data, "name"), created_at=_str(data, "created_at"))


@dataclass(frozen=True)
class CreatedTenant:
    """A new tenant and its first API key, shown this once."""

    tenant: Tenant
    api_key: str = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CreatedTenant:
        tenant = data.get("tenant")
        return cls(
            tenant=Tenant.from_json(tenant if isinstance(tenant, Mapping) else {}),
            api_key=_str(data, "api_key"),
        )


@dataclass(frozen=True)
class ApiKey:
    """An API key record; the key itself is only in :class:`CreatedApiKey`."""

    id: str
    name: Optional[str]
    created_at: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApiKey:
        return cls(id=_str(data, "id"), name=_opt_str(data, "name"), created_at=_str(data, "created_at"))


@dataclass(frozen=True)
class CreatedApiKey(ApiKey):
    """A new API key: ``key`` is shown this once."""

    key: str = field(repr=False, default="")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CreatedApiKey:
        base = ApiKey.from_json(data)
        return cls(id=base.id, name=base.name, created_at=base.created_at, key=_str(data, "key"))


@dataclass(frozen=True)
class AuditEvent:
    """One recorded admin change (``GET /v1/audit-events``). Never holds a secret value, an API
    key or a token. ``actor`` is the API key's id (``key_...``), ``operator``, ``cli`` or
    ``server``; ``request_id`` is the ``x-request-id`` of the request that made the change (None
    outside the API). ``seq`` and the hashes chain the events (``runta audit verify`` checks
    them)."""

    id: str
    seq: int
    time: str
    tenant_id: Optional[str]
    actor: str
    action: str
    target_kind: str
    target_id: Optional[str]
    target_name: Optional[str]
    request_id: Optional[str]
    outcome: str
    prev_hash: str
    hash: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditEvent:
        return cls(
            id=_str(data, "id"),
            seq=_int(data, "seq"),
            time=_str(data, "time"),
            tenant_id=_opt_str(data, "tenant_id"),
            actor=_str(data, "actor"),
            action=_str(data, "action"),
            target_kind=_str(data, "target_kind"),
            target_id=_opt_str(data, "target_id"),
            target_name=_opt_str(data, "target_name"),
            request_id=_opt_str(data, "request_id"),
            outcome=_str(data, "outcome"),
            prev_hash=_str(data, "prev_hash"),
            hash=_str(data, "hash"),
        )
