"""Retries against a real server that is stopped and started again on the same port, with the
same data directory, while the client is retrying. Only idempotent calls are retried; a POST
fails at once, after exactly one attempt."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List

import httpx
import pytest

import runta
from conftest import fake_value
from server import RuntaServer


def restart_later(server: RuntaServer, delay: float) -> threading.Thread:
    port = server.port

    def restart() -> None:
        time.sleep(delay)
        server.start(port=port)

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


def counting_client(server: RuntaServer, attempts: List[str], **options: object) -> runta.Runta:
    def count(request: httpx.Request) -> None:
        attempts.append(request.method)

    http = httpx.Client(event_hooks={"request": [count]})
    return runta.Runta(server.url, server.api_key, http_client=http, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.secrets.get("kept").version,
        lambda c: c.secrets.update("kept", cache_ttl_secs=42).cache_ttl_secs,
        lambda c: c.secrets.delete("kept"),
        lambda c: len(c.audit.list(action="secret.create", target_kind="secret")),
    ],
    ids=["GET", "PUT", "DELETE", "GET audit"],
)
def test_idempotent_call_survives_a_restart(
    own_server: RuntaServer, call: Callable[[runta.Runta], object], caplog: pytest.LogCaptureFixture
) -> None:
    attempts: List[str] = []
    with counting_client(own_server, attempts, max_retries=8) as client:
        client.secrets.create("kept", fake_value())
        own_server.stop()
        thread = restart_later(own_server, 0.6)
        caplog.set_level(logging.INFO, logger="runta")
        try:
            result = call(client)
        finally:
            thread.join()
    assert result in (1, 42, None)
    assert len(attempts) >= 3, attempts  # the POST, at least one failed attempt, the success
    assert any("retry 1 of 8" in r.getMessage() for r in caplog.records)
    status, body = own_server.rest("GET", "/v1/secrets/kept", own_server.api_key)
    if result is None:
        assert status == 404
    else:
        assert body["cache_ttl_secs"] in (300, 42)


def test_post_is_never_retried(own_server: RuntaServer) -> None:
    attempts: List[str] = []
    with counting_client(own_server, attempts, max_retries=8) as client:
        own_server.stop()
        started = time.monotonic()
        with pytest.raises(runta.APIConnectionError):
            client.secrets.create("once", fake_value())
        assert attempts == ["POST"] and time.monotonic() - started < 1.0
        own_server.start(port=own_server.port)
        assert client.secrets.list() == []


def test_retries_give_up_after_max_retries(own_server: RuntaServer) -> None:
    attempts: List[str] = []
    with counting_client(own_server, attempts, max_retries=2) as client:
        own_server.stop()
        with pytest.raises(runta.UnavailableError):
            client.secrets.list()
    assert attempts == ["GET", "GET", "GET"]


@pytest.mark.anyio
async def test_async_get_survives_a_restart(own_server: RuntaServer) -> None:
    async with runta.AsyncRunta(own_server.url, own_server.api_key, max_retries=8) as client:
        await client.secrets.create("kept", fake_value())
        own_server.stop()
        thread = restart_later(own_server, 0.6)
        try:
            assert (await client.secrets.get("kept")).name == "kept"
        finally:
            thread.join()
        own_server.stop()
        with pytest.raises(runta.APIConnectionError):
            await client.secrets.create("other", fake_value())
