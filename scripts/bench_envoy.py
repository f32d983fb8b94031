#!/usr/bin/env python3
"""What injection costs through a real Envoy, side by side, in one run on one machine.

Configurations, all with the same Envoy (one worker), the same "upstream" (a direct response
from Envoy's router, so the upstream costs nothing and the same for all), and the same load
generator (wrk, one thread, fixed connections and duration):

  1. floor         Envoy with no injection
  2. native        Envoy's credential_injector (generic credential from an SDS file)
  3. null-extproc  ext_proc to a processor on runta's tonic stack that answers CONTINUE
  4. runta-tcp     ext_proc to `runta serve`, TCP; the matching rule among 10,000 rules of
                   1,000 runtimes, secret cached
  5. runta-unix    the same over a Unix socket
  6. runta-logged  runta over TCP with its default log level (info): one log line per decision

Then, without Envoy, examples/grpc_load straight against runta and the null processor at 1,
16 and 256 concurrent streams, and examples/scale at 1,000, 100,000 and 1,000,000 rules.

usage: scripts/bench (which builds everything first), or
       python3 scripts/bench_envoy.py [--seconds N] [--connections N] [--json FILE]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
RUNTA = os.path.join(RELEASE, "runta")
NULL = os.path.join(RELEASE, "examples", "null_extproc")
GRPC_LOAD = os.path.join(RELEASE, "examples", "grpc_load")
SCALE = os.path.join(RELEASE, "examples", "scale")
ENVOY = os.environ.get("RUNTA_TEST_ENVOY") or os.path.join(ROOT, ".venv", "bin", "envoy")
SECRET = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz"
RUNTIME = "rt-0"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid):
    """User + system CPU seconds a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def api(base, key, method, path, body=None):
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")


def rules(count):
    """The benchmark rule set: runtime rt-0 has ten rules, one matching the request; the rest
    belong to 999 other runtimes (the same shape as runta::bench_support)."""
    out = []
    for i in range(count):
        runtime = RUNTIME if i < 10 else f"rt-{1 + i % 999}"
        if i == 0:
            host = "api.openai.com"
        elif i % 3 == 0:
            host = f"*.svc{i}.example.com"
        else:
            host = f"api{i}.example.com"
        out.append({
            "runtime": runtime,
            "host": host,
            "path": "/v1/*" if i % 2 == 0 else f"/p{i}/*",
            "credential": "openai-api-key",
            "inject": {"header": "Authorization", "value": "Bearer ${credential}"},
        })
    return out


ENVOY_HEAD = """\
node: {{ id: runta-bench, cluster: runta-bench }}
admin:
  address: {{ pipe: {{ path: {admin} }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          normalize_path: true
          merge_slashes: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"""

EXTPROC_FILTER = """\
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: { cluster_name: extproc }
                timeout: 1s
                initial_metadata:
                - { key: authorization, value: "Bearer %(token)s" }
                - { key: x-runta-tenant, value: default }
                - { key: x-runta-runtime, value: %(runtime)s }
              failure_mode_allow: false
              message_timeout: 0.5s
              processing_mode: { request_header_mode: SEND, response_header_mode: SKIP, request_body_mode: NONE, response_body_mode: NONE, request_trailer_mode: SKIP, response_trailer_mode: SKIP }
              mutation_rules: { disallow_is_error: true }
"""

EXTPROC_CLUSTER = """\
  - name: extproc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    circuit_breakers:
      thresholds: [{ max_connections: 1024, max_pending_requests: 16384, max_requests: 16384 }]
    load_assignment:
      cluster_name: extproc
      endpoints:
      - lb_endpoints:
        - endpoint: { address: %(address)s }
"""

NATIVE_FILTER = """\
          - name: envoy.filters.http.credential_injector
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
              overwrite: true
              credential:
                name: envoy.http.injected_credentials.generic
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
                  credential: { name: openai, sds_config: { path_config_source: { path: %(sds)s } } }
                  header: Authorization
                  header_value_prefix: "Bearer "
"""

DUMMY_CLUSTER = """\
  - name: unused
    type: STATIC
    load_assignment: { cluster_name: unused }
"""


def envoy_config(work, name, filters, clusters):
    port = free_port()
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(ENVOY_HEAD.format(admin=os.path.join(work, f"{name}-admin.sock"), port=port,
                                  filters=filters, clusters=clusters or DUMMY_CLUSTER))
    return path, port


def wrk(port, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", "Host: api.openai.com",
         f"http://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True, text=True, check=True).stdout
    def latency(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_us": latency("50"),
        "p99_us": latency("99"),
        "requests": requests,
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every configuration this many times, interleaved; report medians")
    parser.add_argument("--json")
    args = parser.parse_args()
    for tool in (RUNTA, NULL, GRPC_LOAD, SCALE, ENVOY):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: run scripts/bench")
    if not shutil.which("wrk"):
        raise SystemExit("missing wrk: run scripts/bench (it installs Debian's wrk)")
    work = tempfile.mkdtemp(prefix="runta-bench-")
    children = []

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, **kw)
        children.append(p)
        return p

    results = {"machine": {"cpus": os.cpu_count(), "envoy": subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip().split()[-1]}}
    try:
        # runta, with the rule set, over TCP and a Unix socket (two processes on one database
        # would not do for SQLite: one process, measured twice).
        grpc_port = free_port()
        admin_port = free_port()
        socket_path = os.path.join(work, "runta.sock")
        data = os.path.join(work, "data")
        # The Envoy configurations name tenant and runtime with the generated gateway token: a
        # gateway must be trusted for that (grpc.identity_gateways), or every call is refused.
        trusted = {"RUNTA_GRPC__IDENTITY_GATEWAYS": '["generated"]'}
        env = dict(os.environ, RUNTA_LOG__LEVEL="warn", **trusted)
        runta_tcp = start([RUNTA, "serve", "--data-dir", data, "--admin-listen", f"127.0.0.1:{admin_port}",
                           "--grpc-listen", f"127.0.0.1:{grpc_port}"], env=env, stderr=subprocess.DEVNULL)
        wait_port(admin_port)
        key = open(os.path.join(data, "api-key")).read().strip()
        token = open(os.path.join(data, "gateway-token")).read().strip()
        base = f"http://127.0.0.1:{admin_port}"
        api(base, key, "POST", "/v1/secrets", {"name": "openai-api-key", "value": SECRET, "cache_ttl_secs": 86400})
        all_rules = rules(10_000)
        started = time.time()
        for i in range(0, len(all_rules), 1000):
            api(base, key, "POST", "/v1/rules/batch", {"rules": all_rules[i:i + 1000]})
        results["load_10k_rules_s"] = round(time.time() - started, 2)
        # The Unix-socket server: a second runta on the same data (read-only use here).
        runta_unix = start([RUNTA, "serve", "--data-dir", data, "--admin-listen", "127.0.0.1:0",
                            "--grpc-listen", f"unix:{socket_path}"], env=env, stderr=subprocess.DEVNULL)
        logged_port = free_port()
        runta_logged = start([RUNTA, "serve", "--data-dir", data, "--admin-listen", "127.0.0.1:0",
                              "--grpc-listen", f"127.0.0.1:{logged_port}"],
                             env=dict(os.environ, RUNTA_LOG__LEVEL="info", **trusted), stderr=subprocess.DEVNULL)
        null_port = free_port()
        null = start([NULL, f"127.0.0.1:{null_port}"], stdout=subprocess.DEVNULL)
        wait_port(null_port)
        wait_port(logged_port)
        deadline = time.time() + 30
        while not os.path.exists(socket_path) and time.time() < deadline:
            time.sleep(0.05)

        sds = os.path.join(work, "secret.yaml")
        with open(sds, "w") as f:
            f.write("resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n"
                    f"  name: openai\n  generic_secret: {{ secret: {{ inline_string: \"{SECRET}\" }} }}\n")
        tcp = lambda port: "{ socket_address: { address: 127.0.0.1, port_value: %d } }" % port
        pipe = lambda path: "{ pipe: { path: %s } }" % path
        configs = [
            ("floor", "", "", None),
            ("native", NATIVE_FILTER % {"sds": sds}, "", None),
            ("null-extproc", EXTPROC_FILTER % {"token": token, "runtime": RUNTIME}, EXTPROC_CLUSTER % {"address": tcp(null_port)}, null),
            ("runta-tcp", EXTPROC_FILTER % {"token": token, "runtime": RUNTIME}, EXTPROC_CLUSTER % {"address": tcp(grpc_port)}, runta_tcp),
            ("runta-unix", EXTPROC_FILTER % {"token": token, "runtime": RUNTIME}, EXTPROC_CLUSTER % {"address": pipe(socket_path)}, runta_unix),
            ("runta-logged", EXTPROC_FILTER % {"token": token, "runtime": RUNTIME}, EXTPROC_CLUSTER % {"address": tcp(logged_port)}, runta_logged),
        ]
        # Every configuration gets its own Envoy; rounds interleave them, so that drift of a
        # shared machine spreads over all of them, and the median of each is reported.
        envoys = {}
        for name, filters, clusters, processor in configs:
            path, port = envoy_config(work, name, filters, clusters)
            envoys[name] = (start([ENVOY, "-c", path, "--concurrency", "1", "--use-dynamic-base-id", "-l", "error"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port, processor)
        for name, (_, port, _) in envoys.items():
            wait_port(port)
            wrk(port, 2, args.connections)  # warm up (and fill runta's secret cache)
        runs = {name: [] for name in envoys}
        for round_ in range(args.rounds):
            for name, (_, port, processor) in envoys.items():
                cpu_before = cpu_seconds(processor.pid) if processor else None
                result = wrk(port, args.seconds, args.connections)
                if processor:
                    used = cpu_seconds(processor.pid) - cpu_before
                    result["processor_cpu_s_per_1000"] = round(used / result["requests"] * 1000, 4)
                runs[name].append(result)
                print(f"round {round_ + 1} {name:13} {result}", file=sys.stderr)
        def median(values):
            values = sorted(values)
            return values[len(values) // 2]
        results["envoy"] = {}
        for name, rounds in runs.items():
            results["envoy"][name] = {
                key: median([r[key] for r in rounds]) for key in rounds[0]
            }
            results["envoy"][name]["rps_all_rounds"] = [r["rps"] for r in rounds]
        for envoy, _, _ in envoys.values():
            envoy.send_signal(signal.SIGTERM)
            envoy.wait()
        e = results["envoy"]
        results["ratios"] = {
            "runta_tcp_vs_null_rps": round(e["runta-tcp"]["rps"] / e["null-extproc"]["rps"], 3),
            "runta_tcp_vs_native_rps": round(e["runta-tcp"]["rps"] / e["native"]["rps"], 3),
            "runta_tcp_vs_null_cpu": round(e["runta-tcp"]["processor_cpu_s_per_1000"] / e["null-extproc"]["processor_cpu_s_per_1000"], 3),
            "runta_logged_vs_null_rps": round(e["runta-logged"]["rps"] / e["null-extproc"]["rps"], 3),
            "runta_logged_vs_null_cpu": round(e["runta-logged"]["processor_cpu_s_per_1000"] / e["null-extproc"]["processor_cpu_s_per_1000"], 3),
        }

        results["grpc"] = {}
        for name, port in (("runta", grpc_port), ("null", null_port)):
            for concurrency in (1, 16, 256):
                out = subprocess.run([GRPC_LOAD, f"127.0.0.1:{port}", str(concurrency), "5", token, "default", RUNTIME],
                                     capture_output=True, text=True, check=True).stdout
                results["grpc"][f"{name}/{concurrency}"] = json.loads(out)
                print(f"grpc {name}/{concurrency}: {out.strip()}", file=sys.stderr)
    finally:
        for p in children:
            if p.poll() is None:
                p.terminate()
        for p in children:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    results["scale"] = []
    for count, secrets in ((1_000, 1_000), (100_000, 10_000), (1_000_000, 10_000)):
        out = subprocess.run([SCALE, str(count), str(secrets)], capture_output=True, text=True, check=True).stdout
        results["scale"].append(json.loads(out))
        print(f"scale {out.strip()}", file=sys.stderr)

    text = json.dumps(results, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
