"""Fixtures: one shared server for the suite, a fresh tenant per test (so tests cannot see each
other's secrets and rules), and a dedicated server for tests that stop or pause it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import runta
from server import RuntaServer

#: Obviously fake secret values: never shaped like a real provider key.
FAKE_VALUE = "sk-test-not-real-0001"


def fake_value(label: str = "") -> str:
    return f"sk-test-not-real-{label or uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class TenantInfo:
    name: str
    api_key: str


def new_tenant(server: RuntaServer) -> TenantInfo:
    name = f"t-{uuid.uuid4().hex[:12]}"
    status, body = server.rest("POST", "/v1/tenants", server.operator_token, {"name": name})
    assert status == 201, body
    return TenantInfo(name, body["api_key"])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntaServer]:
    srv = RuntaServer(tmp_path_factory.mktemp("runta") / "data").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RuntaServer]:
    """A server of this test alone: it may be stopped, restarted or paused."""
    srv = RuntaServer(tmp_path / "data").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def tenant(server: RuntaServer) -> TenantInfo:
    return new_tenant(server)


@pytest.fixture
def client(server: RuntaServer, tenant: TenantInfo) -> Iterator[runta.Runta]:
    with runta.Runta(server.url, tenant.api_key) as c:
        yield c


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
