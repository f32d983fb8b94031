"""Every admin API call as data: method, path, body and how to read the answer.

The synchronous and asynchronous clients differ only in how they send; keeping what they send
here means the two cannot drift apart, and each call's mapping to the OpenAPI document
(``docs/openapi.yaml``, operation ids in the comments) is in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Dict, Generic, Iterable, List, Mapping, Optional, TypeVar, Union
from urllib.parse import quote

from .errors import InvalidRequestError
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

#: Which credential a call presents (``PUBLIC``: none, the endpoint is open to anyone).
API_KEY = "api_key"
OPERATOR = "operator"
PUBLIC = "public"


class _NotGiven:
    """The default of optional fields where ``None`` means something (``display_name=None``
    clears the display name), so "not given" needs its own value."""

    _instance: Optional[_NotGiven] = None

    def __new__(cls) -> _NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN = _NotGiven()


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the parser of its answer. The body is left out of ``repr``: it may hold
    a secret value. ``text`` is the media type of an answer that is text, not JSON (``parse``
    then gets the text as it came); error answers are JSON either way."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Optional[Mapping[str, Any]] = field(default=None, repr=False)
    auth: str = API_KEY
    text: Optional[str] = None


@dataclass(frozen=True)
class ListCall(Generic[T]):
    """A list call, sent page after page (``?limit=&cursor=``, plus its ``filters``) until
    ``next_cursor`` is null."""

    path: str
    parse_item: Callable[[Any], T]
    page_size: Optional[int] = None
    auth: str = API_KEY
    filters: Mapping[str, str] = field(default_factory=dict)


def _seg(value: str) -> str:
    """A path segment, percent-encoded so a name or id can never change the route."""
    return quote(value, safe="")


def _none(_: Any) -> None:
    return None


def _check_page_size(page_size: Optional[int]) -> Optional[int]:
    if page_size is not None and not 1 <= page_size <= 1000:
        raise InvalidRequestError("page_size: must be from 1 to 1000", code="invalid_request")
    return page_size


# Secrets ---------------------------------------------------------------------------------------


def create_secret(
    name: str, value: str, cache_ttl_secs: Optional[int], display_name: Optional[str]
) -> Call[Secret]:  # createSecret
    body: Dict[str, Any] = {"name": name, "value": value}
    if cache_ttl_secs is not None:
        body["cache_ttl_secs"] = cache_ttl_secs
    if display_name is not None:
        body["display_name"] = display_name
    return Call("POST", "/v1/secrets", Secret.from_json, body)


def get_secret(name: str) -> Call[Secret]:  # getSecret
    return Call("GET", f"/v1/secrets/{_seg(name)}", Secret.from_json)


def list_secrets(page_size: Optional[int]) -> ListCall[Secret]:  # listSecrets
    return ListCall("/v1/secrets", Secret.from_json, _check_page_size(page_size))


def update_secret(
    name: str,
    value: Optional[str],
    display_name: Union[str, None, _NotGiven],
    cache_ttl_secs: Optional[int],
) -> Call[Secret]:  # updateSecret
    body: Dict[str, Any] = {}
    if value is not None:
        body["value"] = value
    if not isinstance(display_name, _NotGiven):
        body["display_name"] = display_name
    if cache_ttl_secs is not None:
        body["cache_ttl_secs"] = cache_ttl_secs
    return Call("PUT", f"/v1/secrets/{_seg(name)}", Secret.from_json, body)


def delete_secret(name: str) -> Call[None]:  # deleteSecret
    return Call("DELETE", f"/v1/secrets/{_seg(name)}", _none)


# Rules -----------------------------------------------------------------------------------------


def create_rule(
    runtime: str, host: str, path: Optional[str], injection: Injection
) -> Call[Rule]:  # createRule
    if not isinstance(injection, Injection):
        raise InvalidRequestError("injection: must be a runta.Injection", code="invalid_request")
    body = {"host": host, "path": path, "injection": injection.to_json()}
    return Call("POST", f"/v1/runtimes/{_seg(runtime)}/rules", Rule.from_json, body)


def create_rules(rules: Iterable[Union[NewRule, Mapping[str, Any]]]) -> Call[List[Rule]]:  # createRulesBatch
    entries = [r.to_json() if isinstance(r, NewRule) else dict(r) for r in rules]
    if not entries:
        raise InvalidRequestError("rules: give at least one rule", code="invalid_request")
    return Call("POST", "/v1/rules/batch", _rule_list, {"rules": entries})


def _rule_list(page: Any) -> List[Rule]:
    data = page.get("data") if isinstance(page, Mapping) else None
    return [Rule.from_json(item) for item in data or []]


def list_runtime_rules(runtime: str, page_size: Optional[int]) -> ListCall[Rule]:  # listRuntimeRules
    return ListCall(f"/v1/runtimes/{_seg(runtime)}/rules", Rule.from_json, _check_page_size(page_size))


def list_rules(page_size: Optional[int]) -> ListCall[Rule]:  # listRules
    return ListCall("/v1/rules", Rule.from_json, _check_page_size(page_size))


def get_rule(rule_id: str) -> Call[Rule]:  # getRule
    return Call("GET", f"/v1/rules/{_seg(rule_id)}", Rule.from_json)


def delete_rule(rule_id: str) -> Call[None]:  # deleteRule
    return Call("DELETE", f"/v1/rules/{_seg(rule_id)}", _none)


# Runtime tokens --------------------------------------------------------------------------------


def create_token(runtime: str) -> Call[CreatedRuntimeToken]:  # createRuntimeToken
    return Call("POST", f"/v1/runtimes/{_seg(runtime)}/tokens", CreatedRuntimeToken.from_json)


def list_tokens(runtime: str, page_size: Optional[int]) -> ListCall[RuntimeToken]:  # listRuntimeTokens
    return ListCall(
        f"/v1/runtimes/{_seg(runtime)}/tokens", RuntimeToken.from_json, _check_page_size(page_size)
    )


def revoke_token(token_id: str) -> Call[None]:  # revokeRuntimeToken
    return Call("DELETE", f"/v1/runtime-tokens/{_seg(token_id)}", _none)


# Tenants (operator token) and API keys ---------------------------------------------------------


def create_tenant(name: str) -> Call[CreatedTenant]:  # createTenant
    return Call("POST", "/v1/tenants", CreatedTenant.from_json, {"name": name}, auth=OPERATOR)


def list_tenants(page_size: Optional[int]) -> ListCall[Tenant]:  # listTenants
    return ListCall("/v1/tenants", Tenant.from_json, _check_page_size(page_size), auth=OPERATOR)


def create_api_key(name: Optional[str]) -> Call[CreatedApiKey]:  # createApiKey
    body = {"name": name} if name is not None else {}
    return Call("POST", "/v1/api-keys", CreatedApiKey.from_json, body)


def list_api_keys(page_size: Optional[int]) -> ListCall[ApiKey]:  # listApiKeys
    return ListCall("/v1/api-keys", ApiKey.from_json, _check_page_size(page_size))


def delete_api_key(key_id: str) -> Call[None]:  # deleteApiKey
    return Call("DELETE", f"/v1/api-keys/{_seg(key_id)}", _none)


# Audit trail (an API key: its tenant's events; the operator token: every tenant's) ------------

#: A time filter: an aware ``datetime`` or an RFC 3339 string (``2026-01-31T00:00:00Z``).
TimeFilter = Union[datetime, str, None]


def _time_filter(name: str, value: TimeFilter) -> Optional[str]:
    """An RFC 3339 string. A naive ``datetime`` is refused: whether it meant local time or UTC
    cannot be told, and guessing would move the window of an audit query."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidRequestError(
                f"{name}: a datetime needs a timezone (e.g. datetime.now(timezone.utc))",
                code="invalid_request",
            )
        return value.isoformat()
    raise InvalidRequestError(f"{name}: must be a datetime or an RFC 3339 string", code="invalid_request")


def list_audit_events(
    since: TimeFilter,
    until: TimeFilter,
    action: Optional[str],
    target_kind: Optional[str],
    target_id: Optional[str],
    operator: bool,
    page_size: Optional[int],
) -> ListCall[AuditEvent]:  # listAuditEvents
    given = {
        "since": _time_filter("since", since),
        "until": _time_filter("until", until),
        "action": action,
        "target_kind": target_kind,
        "target_id": target_id,
    }
    filters = {key: value for key, value in given.items() if value is not None}
    return ListCall(
        "/v1/audit-events",
        AuditEvent.from_json,
        _check_page_size(page_size),
        auth=OPERATOR if operator else API_KEY,
        filters=filters,
    )


# HTTPS interception CA (public: no credential is sent) -----------------------------------------


def get_ca_certificate() -> Call[str]:  # getCaCertificate
    return Call("GET", "/v1/ca.pem", str, auth=PUBLIC, text="application/x-pem-file")
