"""The module-level default client, so ``import runta`` then ``runta.secrets.create(...)``
works as the product page writes it.

The client is made on first use, not at import: importing ``runta`` must not read credentials
or fail where the environment is not set yet. It reads ``RUNTA_API_URL`` / ``RUNTA_API_KEY``
(then ``./runta-data``) at that moment; :func:`configure` replaces it explicitly.
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional, TypeVar

from . import _operations as ops
from ._sync import ApiKeys, Audit, Runta, Runtime, Secrets, Tenants

T = TypeVar("T")

_lock = threading.Lock()
_client: Optional[Runta] = None


def default_client() -> Runta:
    """The default client, made from the environment on first use."""
    global _client
    with _lock:
        if _client is None:
            _client = Runta()
        return _client


def configure(api_url: Optional[str] = None, api_key: Optional[str] = None, **options: Any) -> Runta:
    """Replaces the default client with ``Runta(api_url, api_key, **options)``."""
    global _client
    client = Runta(api_url, api_key, **options)
    with _lock:
        previous, _client = _client, client
    if previous is not None:
        previous.close()
    return client


class _DefaultTransport:
    """Resolves the default client at call time, so the module-level resources can exist from
    import on."""

    def call(self, call: ops.Call[T]) -> T:
        return default_client()._transport.call(call)

    def collect(self, call: ops.ListCall[T]) -> List[T]:
        return default_client()._transport.collect(call)


_transport = _DefaultTransport()

secrets = Secrets(_transport)
tenants = Tenants(_transport)
api_keys = ApiKeys(_transport)
audit = Audit(_transport)


def runtime(name: str) -> Runtime:
    """A handle on the runtime ``name`` of the default client."""
    return Runtime(_transport, name)


def ca_certificate() -> str:
    """The HTTPS interception CA certificate (PEM) of the default client's server; no key needed."""
    return _transport.call(ops.get_ca_certificate())
