"""The product page's Python snippets (tests/page/page.py, verbatim) run as a user runs them: a
separate Python process with ``RUNTA_API_URL`` / ``RUNTA_API_KEY`` set, against a real server.
What they did is checked with plain HTTP, not through the SDK.

Stage one runs the page up to "List and delete rules" and checks the created secret and rule;
stage two runs the whole page from a clean tenant and checks that the rule it listed and
printed is gone while the secret stays.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

from conftest import TenantInfo, fake_value
from server import RuntaServer

PAGE = Path(__file__).parent / "page" / "page.py"
LIST_AND_DELETE = "# --- List and delete rules ---"


def run_python(code: str, server: RuntaServer, tenant: TenantInfo, cwd: Path, value: str) -> str:
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if not k.startswith("RUNTA_")}
    env.update(RUNTA_API_URL=server.url, RUNTA_API_KEY=tenant.api_key, OPENAI_API_KEY=value)
    script = cwd / "snippet.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert value not in done.stdout + done.stderr
    return done.stdout


def test_page_snippets_create_then_list_and_delete(
    server: RuntaServer, tenant: TenantInfo, tmp_path: Path
) -> None:
    page = PAGE.read_text()
    value = fake_value("page")
    key = tenant.api_key

    # Stage one: store the secret and add the rule.
    run_python(page.split(LIST_AND_DELETE)[0], server, tenant, tmp_path, value)
    status, secret = server.rest("GET", "/v1/secrets/openai-api-key", key)
    assert status == 200 and secret["cache_ttl_secs"] == 0 and secret["version"] == 1
    status, rules = server.rest("GET", "/v1/runtimes/worker/rules", key)
    assert status == 200 and len(rules["data"]) == 1
    rule = rules["data"][0]
    assert rule["host_pattern"] == "api.openai.com"
    assert rule["path_pattern"] == "/v1/*"
    assert rule["injection"] == {
        "credential": "openai-api-key",
        "header": "Authorization",
        "param": None,
        "value": "Bearer ${credential}",
    }

    # Back to an empty tenant, then the whole page.
    assert server.rest("DELETE", f"/v1/rules/{rule['id']}", key)[0] == 204
    assert server.rest("DELETE", "/v1/secrets/openai-api-key", key)[0] == 204
    out = run_python(page, server, tenant, tmp_path, value)

    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    rule_id, host, path = lines[0].split(" ")
    assert rule_id.startswith("rule_") and host == "api.openai.com" and path == "/v1/*"
    assert server.rest("GET", f"/v1/rules/{rule_id}", key)[0] == 404
    assert server.rest("GET", "/v1/runtimes/worker/rules", key)[1]["data"] == []
    status, secret = server.rest("GET", "/v1/secrets/openai-api-key", key)
    assert status == 200 and secret["cache_ttl_secs"] == 0


PARAM_SNIPPET = """\
import os
import runta
from runta import Injection
runtime = runta.runtime("worker")
secret = runta.secrets.create("maps-key", os.environ["OPENAI_API_KEY"])
rule = runtime.secrets.create_rule(
    "maps.example.com",
    path="/geo/*",
    injection=Injection(credential="maps-key", param="key"),
)
print(rule.id, len(runta.secrets.list_rules()))
"""


def test_page_parameter_injection(server: RuntaServer, tenant: TenantInfo, tmp_path: Path) -> None:
    """The page: "The SDK injection type also supports parameter injection by setting param
    instead of header"; ``value`` defaults to ``${credential}``."""
    value = fake_value("param")
    out = run_python(PARAM_SNIPPET, server, tenant, tmp_path, value)
    rule_id, tenant_wide = out.split()
    assert tenant_wide == "1"
    status, rule = server.rest("GET", f"/v1/rules/{rule_id}", tenant.api_key)
    assert status == 200
    assert rule["runtime"] == "worker" and rule["host_pattern"] == "maps.example.com"
    assert rule["injection"] == {
        "credential": "maps-key",
        "header": None,
        "param": "key",
        "value": "${credential}",
    }
