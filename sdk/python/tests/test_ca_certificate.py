"""The HTTPS interception CA certificate (``GET /v1/ca.pem``): public, so it needs no key, and
the PEM text comes back as the server sent it; sync, async and module level. The 404 of a server
without a CA (a PostgreSQL deployment without ``interception.ca_cert_file``) comes from a stub
answering exactly what runta answers: the embedded default always has a CA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List

import httpx
import pytest

import runta
from conftest import TenantInfo
from server import RuntaServer

BEGIN = "-----BEGIN CERTIFICATE-----"
NO_CA_MESSAGE = "this server has no HTTPS interception CA (interception.ca_cert_file is not configured)"


@pytest.fixture
def keyless(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RUNTA_* variables, and a working directory without ./runta-data: no key anywhere."""
    for name in list(os.environ):
        if name.startswith("RUNTA_") and name != "RUNTA_BIN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def served_ca(server: RuntaServer) -> str:
    """The CA the embedded default generated into its data directory."""
    return (server.data_dir / "ca.pem").read_text()


def test_the_pem_without_a_key(server: RuntaServer, keyless: Path) -> None:
    seen: List[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [seen.append]})
    with runta.Runta(server.url, http_client=http) as client:
        pem = client.ca_certificate()
    http.close()
    assert pem.startswith(BEGIN) and pem.strip().endswith("-----END CERTIFICATE-----")
    assert pem.strip() == served_ca(server).strip()
    [request] = seen
    assert (request.method, request.url.path) == ("GET", "/v1/ca.pem")
    assert "authorization" not in request.headers
    assert request.headers["accept"] == "application/x-pem-file, application/json"
    # Without a key, a keyed call is still refused before sending.
    with runta.Runta(server.url) as client, pytest.raises(runta.AuthenticationError):
        client.secrets.list()


def test_a_client_with_a_key_gets_the_same(client: runta.Runta, server: RuntaServer, keyless: Path) -> None:
    with runta.Runta(server.url) as keyless_client:
        assert client.ca_certificate() == keyless_client.ca_certificate()
    assert client.ca_certificate().startswith(BEGIN)


def test_module_level(server: RuntaServer, tmp_path: Path) -> None:
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if not k.startswith("RUNTA_")}
    env["RUNTA_API_URL"] = server.url  # and no key: none is needed
    done = subprocess.run(
        [sys.executable, "-c", "import runta; print(runta.ca_certificate(), end='')"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(BEGIN) and done.stdout.strip() == served_ca(server).strip()


def test_module_level_configured(server: RuntaServer, tenant: TenantInfo) -> None:
    from runta import _default

    previous = _default._client
    client = runta.configure(server.url, tenant.api_key)
    try:
        assert runta.ca_certificate() == client.ca_certificate()
    finally:
        _default._client = previous
        client.close()


@pytest.mark.anyio
async def test_async(server: RuntaServer, keyless: Path) -> None:
    async with runta.AsyncRunta(server.url) as client:
        pem = await client.ca_certificate()
    assert pem.startswith(BEGIN) and pem.strip() == served_ca(server).strip()


class _NoCa(BaseHTTPRequestHandler):
    """Answers as a runta server without a CA does."""

    def do_GET(self) -> None:
        body = json.dumps({"error": {"code": "interception_disabled", "message": NO_CA_MESSAGE}}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def no_ca_url() -> Iterator[str]:
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _NoCa)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{stub.server_address[1]}"
    finally:
        stub.shutdown()
        stub.server_close()
        thread.join()


def test_not_found_without_a_ca(no_ca_url: str, keyless: Path) -> None:
    with runta.Runta(no_ca_url) as client, pytest.raises(runta.NotFoundError) as caught:
        client.ca_certificate()
    err = caught.value
    assert (err.status, err.code, err.message) == (404, "interception_disabled", NO_CA_MESSAGE)


@pytest.mark.anyio
async def test_async_not_found_without_a_ca(no_ca_url: str, keyless: Path) -> None:
    async with runta.AsyncRunta(no_ca_url) as client:
        with pytest.raises(runta.NotFoundError) as caught:
            await client.ca_certificate()
    assert (caught.value.status, caught.value.code) == (404, "interception_disabled")
