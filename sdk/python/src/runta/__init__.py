"""Python SDK of runta egress: store secrets, attach injection rules to runtimes, and issue
runtime tokens through the admin REST API.

``runta.Runta`` is the client (``runta.AsyncRunta`` the same, awaited). After a plain
``import runta`` a default client made from the environment on first use is behind
``runta.secrets``, ``runta.runtime(name)``, ``runta.tenants``, ``runta.api_keys``,
``runta.audit`` and ``runta.ca_certificate()``.
"""

from ._async import (
    AsyncApiKeys,
    AsyncAudit,
    AsyncRunta,
    AsyncRuntime,
    AsyncRuntimeSecrets,
    AsyncRuntimeTokens,
    AsyncSecrets,
    AsyncTenants,
)
from ._default import api_keys, audit, ca_certificate, configure, default_client, runtime, secrets, tenants
from ._operations import NOT_GIVEN
from ._sync import ApiKeys, Audit, Runta, Runtime, RuntimeSecrets, RuntimeTokens, Secrets, Tenants
from ._version import __version__
from .errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RuntaError,
    UnavailableError,
)
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

__all__ = [
    "__version__",
    # clients
    "Runta",
    "AsyncRunta",
    "Runtime",
    "AsyncRuntime",
    "Secrets",
    "AsyncSecrets",
    "RuntimeSecrets",
    "AsyncRuntimeSecrets",
    "RuntimeTokens",
    "AsyncRuntimeTokens",
    "Tenants",
    "AsyncTenants",
    "ApiKeys",
    "AsyncApiKeys",
    "Audit",
    "AsyncAudit",
    # the module-level default client
    "secrets",
    "runtime",
    "tenants",
    "api_keys",
    "audit",
    "ca_certificate",
    "default_client",
    "configure",
    "NOT_GIVEN",
    # models
    "Injection",
    "NewRule",
    "Secret",
    "Rule",
    "RuntimeToken",
    "CreatedRuntimeToken",
    "Tenant",
    "CreatedTenant",
    "ApiKey",
    "CreatedApiKey",
    "AuditEvent",
    # errors
    "RuntaError",
    "InvalidRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "UnavailableError",
    "APIConnectionError",
    "APITimeoutError",
]
