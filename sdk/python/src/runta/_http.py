"""Sending calls: credentials, timeout, User-Agent, retries, error mapping and pagination, once
for the synchronous transport and once for the asynchronous one, around the shared decisions in
:class:`_Policy`.

Retries: only idempotent calls (GET, PUT, DELETE) are retried, on connection failures and on
503, with exponential backoff and jitter. A POST is never retried: it may have been applied
before the connection broke, and retrying it could create a second secret, rule or token.

Nothing here logs or quotes a request body (it may hold a secret value) or a credential; log
lines name the method, the path and the outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import random
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple, TypeVar, Union

import httpx

from ._operations import API_KEY, PUBLIC, Call, ListCall
from ._settings import Settings
from ._version import __version__
from .errors import APIConnectionError, APITimeoutError, RuntaError, error_from_response

T = TypeVar("T")

logger = logging.getLogger("runta")

USER_AGENT = f"runta-python/{__version__} (python/{platform.python_version()}; httpx/{httpx.__version__})"
IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE", "HEAD", "OPTIONS"})
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 3

# Connection failures: refused, reset, closed before the answer. Worth another attempt for an
# idempotent call. Timeouts are not: the wait has been long enough already.
_RETRYABLE = (httpx.NetworkError, httpx.RemoteProtocolError)

Timeout = Union[float, httpx.Timeout, None]


class _Policy:
    """What both transports share: headers, retry decisions and reading answers."""

    def __init__(self, settings: Settings, timeout: Timeout, max_retries: int) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.settings = settings
        self.timeout = timeout
        self.max_retries = max_retries
        self.base_delay = 0.5
        self.max_delay = 8.0

    def headers(self, auth: str, body: Optional[bytes], text: Optional[str] = None) -> Dict[str, str]:
        """The request's headers; a ``PUBLIC`` call reads and sends no credential."""
        headers = {
            "User-Agent": USER_AGENT,
            # Errors are JSON even where the answer is text.
            "Accept": "application/json" if text is None else f"{text}, application/json",
        }
        if auth != PUBLIC:
            credential = self.settings.api_key if auth == API_KEY else self.settings.operator_token
            headers["Authorization"] = f"Bearer {credential.get()}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    @staticmethod
    def encode(body: Optional[Mapping[str, Any]]) -> Optional[bytes]:
        """The JSON body, ASCII-escaped: encoding cannot fail, so no encoder error (whose repr
        would hold the whole body, secret value included) can be raised."""
        return None if body is None else json.dumps(body, ensure_ascii=True).encode("ascii")

    def url(self, path: str) -> str:
        return self.settings.api_url + path

    def retry_delay(self, method: str, retries_done: int, path: str, reason: str) -> Optional[float]:
        """Seconds to wait before the next attempt, or None when this call must not be retried."""
        if method not in IDEMPOTENT_METHODS or retries_done >= self.max_retries:
            return None
        ceiling = min(self.max_delay, self.base_delay * (2.0**retries_done))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        logger.info(
            "runta: %s %s: %s; retry %d of %d in %.2fs",
            method,
            path,
            reason,
            retries_done + 1,
            self.max_retries,
            delay,
        )
        return delay

    def next_delay(
        self,
        method: str,
        retries_done: int,
        path: str,
        failure: Optional[Tuple[bool, RuntaError]],
        response: Optional[httpx.Response],
    ) -> Optional[float]:
        """After an attempt: seconds to wait before the next one, or None to stop here."""
        if failure is not None:
            retryable, error = failure
            return self.retry_delay(method, retries_done, path, error.message) if retryable else None
        if response is not None and response.status_code == 503:
            return self.retry_delay(method, retries_done, path, "503 Service Unavailable")
        return None

    def classify(self, exc: httpx.HTTPError, method: str, path: str) -> Tuple[bool, RuntaError]:
        """Whether a transport failure may be retried, and the error to raise if not. The
        message names the call and the failure; an exception's own text is quoted only for
        network errors ("[Errno 111] Connection refused"), since others may quote the request."""
        where = f"{method} {path}: the runta server at {self.settings.api_url}"
        name = type(exc).__name__
        if isinstance(exc, _RETRYABLE):
            detail = f": {exc}" if isinstance(exc, httpx.NetworkError) else ""
            return True, APIConnectionError(
                f"{where} cannot be reached: {name}{detail}", code="connection_failed"
            )
        if isinstance(exc, httpx.TimeoutException):
            return False, APITimeoutError(f"{where} did not answer in time ({name})", code="timeout")
        return False, APIConnectionError(f"{where}: the request failed ({name})", code="connection_failed")

    @staticmethod
    def read(
        response: httpx.Response, method: str, path: str, elapsed: float, text: Optional[str] = None
    ) -> Any:
        """The answer's JSON (None for 204), its text for a ``text`` call, or the error it
        stands for."""
        logger.debug("runta: %s %s -> %d in %.0f ms", method, path, response.status_code, elapsed * 1000)
        if response.is_success and text is not None:
            return response.text
        if response.is_success:
            if response.status_code == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise RuntaError(
                    f"{method} {path}: the server answered with something that is not JSON",
                    status=response.status_code,
                    code="invalid_response",
                ) from None
        raise error_from_response(response.status_code, response.reason_phrase, response.content)

    @staticmethod
    def page_params(call: ListCall[Any], cursor: Optional[str]) -> Dict[str, str]:
        params: Dict[str, str] = dict(call.filters)
        page_size = call.page_size
        if page_size is not None:
            params["limit"] = str(page_size)
        if cursor:
            params["cursor"] = cursor
        return params

    @staticmethod
    def page_items(page: Any) -> Tuple[List[Any], Optional[str]]:
        if not isinstance(page, Mapping):
            raise RuntaError("a list answer is not a JSON object", code="invalid_response")
        data = page.get("data")
        cursor = page.get("next_cursor")
        return (list(data) if isinstance(data, list) else []), (cursor if isinstance(cursor, str) else None)


class SyncTransport:
    """Sends calls with an ``httpx.Client``."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        self._policy = _Policy(settings, timeout, max_retries)
        self._owns_client = http_client is None
        self._client = http_client if http_client is not None else httpx.Client()

    @property
    def api_url(self) -> str:
        return self._policy.settings.api_url

    def call(self, call: Call[T]) -> T:
        return call.parse(self._send(call.method, call.path, call.auth, body=call.body, text=call.text))

    def collect(self, call: ListCall[T]) -> List[T]:
        items: List[T] = []
        cursor: Optional[str] = None
        while True:
            params = self._policy.page_params(call, cursor)
            data, cursor = self._policy.page_items(self._send("GET", call.path, call.auth, params=params))
            items.extend(call.parse_item(item) for item in data)
            if cursor is None:
                return items

    def _send(
        self,
        method: str,
        path: str,
        auth: str,
        *,
        body: Optional[Mapping[str, Any]] = None,
        params: Optional[Dict[str, str]] = None,
        text: Optional[str] = None,
    ) -> Any:
        policy = self._policy
        content = policy.encode(body)
        headers = policy.headers(auth, content, text)
        retries = 0
        while True:
            started = time.monotonic()
            failure: Optional[Tuple[bool, RuntaError]] = None
            try:
                response = self._client.request(
                    method,
                    policy.url(path),
                    params=params,
                    content=content,
                    headers=headers,
                    timeout=policy.timeout,
                )
            except httpx.HTTPError as exc:
                failure = policy.classify(exc, method, path)
            delay = policy.next_delay(method, retries, path, failure, None if failure else response)
            if delay is None:
                if failure is not None:
                    # Raised outside the except block: the httpx error (and its request) is not kept.
                    raise failure[1]
                return policy.read(response, method, path, time.monotonic() - started, text)
            time.sleep(delay)
            retries += 1

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


class AsyncTransport:
    """Sends calls with an ``httpx.AsyncClient`` (asyncio)."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self._policy = _Policy(settings, timeout, max_retries)
        self._owns_client = http_client is None
        self._client = http_client if http_client is not None else httpx.AsyncClient()

    @property
    def api_url(self) -> str:
        return self._policy.settings.api_url

    async def call(self, call: Call[T]) -> T:
        return call.parse(await self._send(call.method, call.path, call.auth, body=call.body, text=call.text))

    async def collect(self, call: ListCall[T]) -> List[T]:
        items: List[T] = []
        cursor: Optional[str] = None
        while True:
            params = self._policy.page_params(call, cursor)
            page = await self._send("GET", call.path, call.auth, params=params)
            data, cursor = self._policy.page_items(page)
            items.extend(call.parse_item(item) for item in data)
            if cursor is None:
                return items

    async def _send(
        self,
        method: str,
        path: str,
        auth: str,
        *,
        body: Optional[Mapping[str, Any]] = None,
        params: Optional[Dict[str, str]] = None,
        text: Optional[str] = None,
    ) -> Any:
        policy = self._policy
        content = policy.encode(body)
        headers = policy.headers(auth, content, text)
        retries = 0
        while True:
            started = time.monotonic()
            failure: Optional[Tuple[bool, RuntaError]] = None
            try:
                response = await self._client.request(
                    method,
                    policy.url(path),
                    params=params,
                    content=content,
                    headers=headers,
                    timeout=policy.timeout,
                )
            except httpx.HTTPError as exc:
                failure = policy.classify(exc, method, path)
            delay = policy.next_delay(method, retries, path, failure, None if failure else response)
            if delay is None:
                if failure is not None:
                    # Raised outside the except block: the httpx error (and its request) is not kept.
                    raise failure[1]
                return policy.read(response, method, path, time.monotonic() - started, text)
            await asyncio.sleep(delay)
            retries += 1

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
