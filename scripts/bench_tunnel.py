#!/usr/bin/env python3
"""HTTPS interception through the real gateway, next to the plain-HTTP path, in one run.

One `runta serve` (release build, SQLite), the gateway Envoy `runta envoy bootstrap --mode
gateway` renders (one worker), a TLS upstream (another Envoy answering every request itself, so
the upstream costs little and the same for every configuration), and examples/tunnel_load:

  plain              absolute-form GETs through the proxy, kept-alive connections
  tunnel             GETs inside intercepted CONNECT tunnels (TLS terminated with runta's
                     leaf, re-originated upstream), kept-alive tunnels
  new tunnel, same name    CONNECT + TLS handshake + one GET, sequentially; the leaf cached
  new tunnel, new name     the same with a name never asked for (a wildcard rule): runta mints
                           the leaf over SDS during the handshake

Each measured in interleaved rounds; medians are reported.

usage: scripts/bench (which builds everything first), or
       python3 scripts/bench_tunnel.py [--seconds N] [--connections N] [--rounds N] [--json FILE]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench_envoy import ENVOY, free_port, wait_port  # the same machinery as the other bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
RUNTA = os.path.join(RELEASE, "runta")
LOAD = os.path.join(RELEASE, "examples", "tunnel_load")
SECRET = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz"


def run(*args, env=None, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env, **kw).stdout


def upstream_config(port, cert, key, admin):
    return f"""
admin: {{ address: {{ pipe: {{ path: "{admin}" }} }} }}
static_resources:
  listeners:
  - name: upstream
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: "{cert}" }}
              private_key: {{ filename: "{key}" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    for path in (RUNTA, LOAD, ENVOY):
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}: run scripts/bench (it builds and installs them)")
    procs = []
    work = tempfile.mkdtemp(prefix="runta-bench-tunnel-")
    try:
        # The upstream's CA and certificate (for the bench names), made with openssl.
        ca_key, ca = os.path.join(work, "up-ca.key"), os.path.join(work, "up-ca.pem")
        key, csr, cert = (os.path.join(work, n) for n in ("up.key", "up.csr", "up.pem"))
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
        run("openssl", "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=bench upstream CA",
            "-days", "2", "-out", ca)
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        run("openssl", "req", "-new", "-key", key, "-subj", "/CN=api.bench.test", "-out", csr)
        ext = os.path.join(work, "ext.cnf")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:api.bench.test,DNS:*.fresh.bench.test\n")
        run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", cert)
        up_port = free_port()
        up_config = os.path.join(work, "upstream.yaml")
        with open(up_config, "w") as f:
            f.write(upstream_config(up_port, cert, key, os.path.join(work, "up-admin.sock")))
        procs.append(subprocess.Popen([ENVOY, "-c", up_config, "--concurrency", "1",
                                       "--use-dynamic-base-id", "-l", "error"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        dns = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/scripts/dns_stub.py")],
                               stdout=subprocess.PIPE, text=True)
        procs.append(dns)
        dns_port = int(dns.stdout.readline())

        grpc, admin = free_port(), free_port()
        env = dict(os.environ, RUNTA_API_URL=f"http://127.0.0.1:{admin}", RUNTA_LOG__LEVEL="warn")
        env.pop("RUNTA_API_KEY", None)
        procs.append(subprocess.Popen(
            [RUNTA, "serve", "--data-dir", os.path.join(work, "data"),
             "--grpc-listen", f"127.0.0.1:{grpc}", "--admin-listen", f"127.0.0.1:{admin}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(admin)
        time.sleep(0.3)
        cli = lambda *a, **kw: run(RUNTA, *a, "--data-dir", os.path.join(work, "data"), env=dict(env, **kw))
        cli("secret", "add", "bench-key", "--value-env", "V", V=SECRET)
        cli("secret", "rule", "add", "worker", "--host", "api.bench.test", "--credential", "bench-key",
            "--inject-header", "Authorization", "--inject-value", "Bearer ${credential}")
        cli("secret", "rule", "add", "worker", "--host", "*.fresh.bench.test", "--credential",
            "bench-key", "--inject-header", "x-api-key")
        token = json.loads(cli("runtime", "token", "create", "worker", "-o", "json"))["token"]
        runta_ca = os.path.join(work, "runta-ca.pem")
        with open(runta_ca, "w") as f:
            f.write(cli("ca", "export"))
        proxy = free_port()
        gateway = os.path.join(work, "gateway.yaml")
        cli("envoy", "bootstrap", "--mode", "gateway", "--listen", f"127.0.0.1:{proxy}",
            "--extproc-address", f"127.0.0.1:{grpc}", "--ca-bundle", ca,
            "--dns-resolver", f"127.0.0.1:{dns_port}",
            "--allow-upstream-address", f"127.0.0.1:{up_port}",
            "--admin-socket", os.path.join(work, "gw-admin.sock"), "--out", gateway)
        procs.append(subprocess.Popen([ENVOY, "-c", gateway, "--concurrency", "1",
                                       "--use-dynamic-base-id", "-l", "error"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(proxy)
        wait_port(up_port)

        def load(mode, host, connections, seconds):
            out = subprocess.run([LOAD, mode, str(proxy), token, runta_ca, host, str(up_port),
                                  str(connections), str(seconds)],
                                 check=True, capture_output=True, text=True)
            if out.stderr:
                print(out.stderr.strip(), file=sys.stderr)
            return json.loads(out.stdout)

        cases = [
            ("plain HTTP", "plain", "api.bench.test", args.connections),
            ("intercepted tunnel", "tunnel", "api.bench.test", args.connections),
            ("new tunnel, same name", "handshake", "api.bench.test", 1),
            ("new tunnel, new name", "handshake", "*.fresh.bench.test", 1),
        ]
        for _, mode, host, connections in cases:  # warm up: caches, DNS, pools
            result = load(mode, host, connections, 1)
            if result["errors"] or not result["requests"]:
                raise SystemExit(f"{mode} {host}: {result}")
        results = {name: [] for name, *_ in cases}
        for _ in range(args.rounds):
            for name, mode, host, connections in cases:
                results[name].append(load(mode, host, connections, args.seconds))
        summary = {}
        print(f"\nHTTPS interception, {args.rounds} rounds of {args.seconds:g} s "
              f"({args.connections} connections for the kept-alive cases), medians:")
        print(f"{'':26} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name, *_ in cases:
            rounds = results[name]
            row = {k: statistics.median(r[k] for r in rounds)
                   for k in ("rps", "p50_ms", "p99_ms")}
            row["errors"] = sum(r["errors"] for r in rounds)
            summary[name] = row
            print(f"{name:26} {row['rps']:9.0f} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} "
                  f"{row['errors']:7d}")
        plain, tunnel = summary["plain HTTP"], summary["intercepted tunnel"]
        print(f"\nintercepted / plain: throughput x{tunnel['rps'] / plain['rps']:.2f}, "
              f"p99 x{tunnel['p99_ms'] / plain['p99_ms']:.2f}")
        same, new = summary["new tunnel, same name"], summary["new tunnel, new name"]
        print(f"a new tunnel with a new name (minted over SDS) vs a cached one: "
              f"p50 {new['p50_ms']:.2f} ms vs {same['p50_ms']:.2f} ms")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
