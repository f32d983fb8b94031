"""Settings resolve like the CLI's (arguments, environment, the data directory, defaults); the
module-level default client; the User-Agent and the default timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List

import httpx
import pytest

import runta
from conftest import TenantInfo, fake_value
from server import RuntaServer


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RUNTA_* variables, and a working directory without ./runta-data."""
    for name in list(os.environ):
        if name.startswith("RUNTA_") and name != "RUNTA_BIN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults(clean_env: Path) -> None:
    client = runta.Runta()
    assert client.api_url == "http://127.0.0.1:8080"
    with pytest.raises(runta.AuthenticationError) as caught:
        client.secrets.list()  # no key anywhere: refused before any request
    assert caught.value.status is None and caught.value.code == "no_credential"
    assert "RUNTA_API_KEY" in caught.value.message
    with pytest.raises(ValueError):
        runta.Runta("127.0.0.1:8080")


def test_arguments_then_environment_then_data_dir(
    clean_env: Path, server: RuntaServer, tenant: TenantInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ./runta-data/api-key in the working directory: the default tenant's key.
    shutil.copytree(server.data_dir, clean_env / "runta-data", ignore=shutil.ignore_patterns("runta.db*"))
    monkeypatch.setenv("RUNTA_API_URL", server.url)
    runta.Runta().secrets.create("from-data-dir", fake_value())
    assert server.rest("GET", "/v1/secrets/from-data-dir", server.api_key)[0] == 200

    # RUNTA_API_KEY wins over the file; an argument wins over both.
    monkeypatch.setenv("RUNTA_API_KEY", tenant.api_key)
    runta.Runta().secrets.create("from-env", fake_value())
    assert server.rest("GET", "/v1/secrets/from-env", tenant.api_key)[0] == 200
    monkeypatch.setenv("RUNTA_API_KEY", "runta_ak_wrong")
    runta.Runta(api_key=tenant.api_key).secrets.create("from-argument", fake_value())
    assert server.rest("GET", "/v1/secrets/from-argument", tenant.api_key)[0] == 200
    with pytest.raises(runta.AuthenticationError):
        runta.Runta().secrets.list()

    # RUNTA_DATA_DIR moves the data directory; the operator token comes from there too.
    monkeypatch.delenv("RUNTA_API_KEY")
    monkeypatch.setenv("RUNTA_DATA_DIR", str(server.data_dir))
    shutil.rmtree(clean_env / "runta-data")
    assert "from-data-dir" in [s.name for s in runta.Runta().secrets.list()]
    assert "default" in [t.name for t in runta.Runta().tenants.list()]


def test_module_level_default_client(server: RuntaServer, tenant: TenantInfo, tmp_path: Path) -> None:
    code = (
        "import runta\n"
        "runta.secrets.create('mod-level', __import__('os').environ['VALUE'])\n"
        "print(len(runta.secrets.list()), len(runta.api_keys.list()), runta.default_client().api_url)\n"
        "tenants = [t.name for t in runta.tenants.list()]\n"
        "print(len(runta.runtime('worker').tokens.list()), 'default' in tenants)\n"
    )
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if not k.startswith("RUNTA_")}
    env.update(
        RUNTA_API_URL=server.url,
        RUNTA_API_KEY=tenant.api_key,
        RUNTA_OPERATOR_TOKEN=server.operator_token,
        VALUE=fake_value(),
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1", server.url, "0", "True"]

    # Importing reads nothing and sends nothing: fine without any settings.
    bare = {k: v for k, v in env.items() if not k.startswith("RUNTA_")}
    done = subprocess.run(
        [sys.executable, "-c", "import runta; print(runta.__version__)"],
        env=bare,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == runta.__version__


def test_user_agent_and_default_timeout(server: RuntaServer) -> None:
    seen: List[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [seen.append]})
    with runta.Runta(server.url, server.api_key, http_client=http) as client:
        client.secrets.list()
    http.close()
    assert seen[0].headers["user-agent"].startswith(f"runta-python/{runta.__version__} ")
    assert seen[0].extensions["timeout"] == {"connect": 30.0, "read": 30.0, "write": 30.0, "pool": 30.0}
    assert version("runta") == runta.__version__


def test_configure_replaces_the_default_client(server: RuntaServer, tenant: TenantInfo) -> None:
    from runta import _default

    previous = _default._client
    try:
        client = runta.configure(server.url, tenant.api_key, timeout=5.0)
        assert runta.default_client() is client
        runta.secrets.create("configured", fake_value())
        assert [r.name for r in client.secrets.list()] == ["configured"]
        assert runta.runtime("worker").tokens.list() == []
    finally:
        _default._client = previous
