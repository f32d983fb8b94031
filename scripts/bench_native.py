#!/usr/bin/env python3
"""Native injection in a sidecar: throughput and CPU next to Envoy's credential_injector and the
ext_proc sidecar, and how fast a change reaches the injection, in one run on one machine.

One `runta serve` (release build, SQLite, log level warn) with runtime `worker`: 1,000 rules on
1,000 distinct hosts, `api{i}.bench.test` injecting `Authorization: Bearer ${credential}` with
its own secret `k{i}` (cached an hour, so the rule compiles to a native route). A DNS stub
answers every name with 127.0.0.1; upstreams present a certificate for `*.bench.test` signed by
a CA made here with openssl.

1. Throughput, the same Envoy binary with one worker (`--concurrency 1`) for each, the same
   upstream (another Envoy terminating TLS and answering 200 itself: fast and the same for
   all), the same load (wrk, one thread, --connections, --seconds, absolute-form
   `GET http://api7.bench.test:PORT/v1/x` as an HTTP client behind HTTP_PROXY sends it):

     credential_injector  hand-written: the sidecar's forwarding path (access log, authority
                          check, dynamic forward proxy with the same DNS cache and resolver,
                          upstream address guard, TLS with SNI and SAN validation, the same
                          header removals) with Envoy's credential_injector (generic
                          credential from a static SDS file, overwrite) doing the injection;
                          no host matching at all
     native               `runta envoy bootstrap --mode sidecar --runtime worker`: routes and
                          secrets over Delta ADS, header_mutation with %SECRET()%, ext_proc
                          disabled on the compiled route
     extproc              the same with `--injection extproc`: every request through runta

   Each configuration runs --rounds times, interleaved (drift of a shared machine spreads over
   all of them); medians are reported. Per run: req/s, latency p50/p99 (wrk), Envoy CPU per
   request (user + system CPU seconds of the Envoy process over the run, from /proc/PID/stat,
   divided by the requests wrk completed), runta's CPU per request the same way, and the
   ext_proc streams the sidecar opened per request (Envoy's http.egress.ext_proc.streams_started;
   0 for native proves ext_proc was not called, 1 for extproc that it was). Before measuring,
   each configuration's injection is checked once against an echo upstream.

2. Secret rotation -> injected: `PUT /v1/secrets/k7` with a new value through the admin API,
   then a tight loop of GETs through the sidecar (keep-alive http.client connection, the
   sidecar as proxy) to the echo upstream (tests/scripts/echo_upstream.py: TLS, answers the
   headers it received; run with TCP_NODELAY set on its connections, without which Nagle's
   algorithm holds each of its answers ~40 ms) until the echoed Authorization carries the new
   value. Timed from before the PUT. --rotations times, p50/p99. The route of api7 is native
   throughout: the sidecar's ext_proc stream counter, read before and after, shows that no
   poll went through ext_proc.

3. Rule added -> injected, the runtime holding 1,000 rules (and growing by one each time):
   a secret `fresh{n}` is created first (untimed), the new host `new{n}.bench.test` is asked
   once (DNS and upstream connection warm; not injected), then timed from before
   `POST /v1/runtimes/worker/rules` until the new host's request comes back injected.
   --additions times, p50/p99.

   In the native sidecar a host without a compiled route goes to ext_proc (the catch-all
   virtual host), and runta's ext_proc knows the rule as soon as the POST returns: the first
   injected answer usually comes from ext_proc. Two figures are reported: "first injected"
   (by any path: what a client sees) and "natively" (the first injected answer served by a
   compiled route: the route table, and the secret it injects, arrived over ADS). Which route
   served a poll is read from Envoy's access log afterwards (every poll asks its own path; the
   log names the route: `rule:<ids>` for a compiled one); polling goes on after the first
   injected answer until the ext_proc stream counter, read every 0.1 s from Envoy's admin
   socket, stands still. (Reading the counter on every poll is no option: a stats read costs
   Envoy's main thread, the thread that applies xDS updates, several milliseconds.)

   The same two measurements through the ext_proc sidecar are the baseline (the native sidecar
   is stopped first, so ADS pushes do not compete). A change not seen after --timeout seconds
   is counted as a timeout and left out of the percentiles.

Nothing is pinned: wrk, the two Envoys, runta and the upstream share the machine's cores. The
load average at the start is printed with the figures. No pass/fail: the issue's targets
(native >= 0.9x credential_injector's req/s; native's Envoy CPU per request <= 0.4x
extproc's) are printed next to the ratios for reference.

usage: scripts/bench (which builds everything first), or
       python3 scripts/bench_native.py [--seconds N] [--connections N] [--rounds N]
           [--rotations N] [--additions N] [--timeout S] [--json FILE]
"""
import argparse
import http.client
import json
import math
import os
import re
import secrets as random_tokens
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_envoy import ENVOY, cpu_seconds, free_port, wait_port  # noqa: E402
from bench_tunnel import upstream_config  # noqa: E402  (the direct-response TLS upstream)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTA = os.path.join(ROOT, "target", "release", "runta")
DNS_STUB = os.path.join(ROOT, "tests", "scripts", "dns_stub.py")
ECHO = os.path.join(ROOT, "tests", "scripts", "echo_upstream.py")
RUNTIME = "worker"
RULES = 1000
TARGET = 7  # the rule the requests match: api7.bench.test, secret k7
EXTPROC_STREAMS = "http.egress.ext_proc.streams_started"
TEMPLATE = "Bearer ${credential}"
STATS_EVERY = 0.1  # seconds between reads of a sidecar's ext_proc counter while polling


def secret_value(i):
    return f"sk-bench-{i:04d}-0123456789abcdefghijklmnopqrstuvwxyz"


def host(i):
    return f"api{i}.bench.test"


# ---------------------------------------------------------------------------------------------
# Clients: the admin API, the sidecar as a proxy, Envoy's admin socket.

class Api:
    """runta's admin API over one kept-alive connection."""

    def __init__(self, port, key):
        self.port, self.key, self.conn = port, key, None

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                text = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed while idle: once more, fresh.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        if response.status >= 300:
            raise SystemExit(f"{method} {path}: {response.status} {text[:500]!r}")
        return json.loads(text or b"null")


class Proxy:
    """GETs through a sidecar (or any forward proxy) on one kept-alive connection."""

    def __init__(self, port):
        self.port, self.conn = port, None

    def get(self, url):
        """(status, the echo upstream's Authorization values or None)."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                # Absolute form: http.client sends the URL as given and Host from it.
                self.conn.request("GET", url)
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        if response.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        try:
            seen = json.loads(body)
            values = [v for k, v in seen["headers"] if k == "authorization"]
        except (ValueError, KeyError, TypeError):
            values = None
        return response.status, values

    def close(self):
        if self.conn is not None:
            self.conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("envoy", timeout=10)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


class EnvoyAdmin:
    """Counters of an Envoy's admin interface (a Unix socket), over one kept-alive connection."""

    def __init__(self, path):
        self.path, self.conn = path, None

    def stat(self, name):
        query = "/stats?filter=" + urllib_quote("^" + re.escape(name) + "$")
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = UnixHTTPConnection(self.path)
            try:
                self.conn.request("GET", query)
                text = self.conn.getresponse().read().decode()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        for line in text.splitlines():
            if line.startswith(name + ": "):
                return int(line.split(": ", 1)[1])
        return 0

    def close(self):
        if self.conn is not None:
            self.conn.close()


def urllib_quote(text):
    from urllib.parse import quote
    return quote(text, safe="")


# ---------------------------------------------------------------------------------------------
# The credential_injector configuration: the sidecar's forwarding path, Envoy's filter injecting.

# As src/envoy.rs renders them (AUTHORITY_REGEX, ALWAYS_BLOCKED_UPSTREAMS, the access log).
AUTHORITY_REGEX = "^([[][0-9A-Fa-f:.]+[]]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$"
ALWAYS_BLOCKED = [("0.0.0.0", 8), ("127.0.0.0", 8), ("169.254.0.0", 16), ("::", 96),
                  ("::ffff:0:0", 96), ("fe80::", 10), ("fd00:ec2::254", 128), ("64:ff9b::", 104),
                  ("64:ff9b::7f00:0", 104), ("64:ff9b::a9fe:0", 112)]


def ip_matcher(indent, addr, prefix_len, port=None):
    pad = " " * indent
    text = (f"{pad}- matcher:\n"
            f"{pad}    name: envoy.rbac.matchers.upstream_ip_port\n"
            f"{pad}    typed_config:\n"
            f"{pad}      \"@type\": type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher\n"
            f"{pad}      upstream_ip: {{ address_prefix: \"{addr}\", prefix_len: {prefix_len} }}\n")
    if port:
        text += f"{pad}      upstream_port_range: {{ start: {port}, end: {port + 1} }}\n"
    return text


def credential_injector_config(port, admin, sds, ca, dns_port, allowed_ports):
    refused = "".join(ip_matcher(28, a, n) for a, n in ALWAYS_BLOCKED)
    allowed = "".join(ip_matcher(30, "127.0.0.1", 32, p) for p in allowed_ports)
    return f"""\
admin: {{ address: {{ pipe: {{ path: "{admin}" }} }} }}
node: {{ id: bench-credential-injector, cluster: bench-credential-injector }}
static_resources:
  listeners:
  - name: egress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: egress
          generate_request_id: false
          http_protocol_options: {{ allow_absolute_url: true, accept_http_10: true }}
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                text_format_source:
                  inline_string: "[%START_TIME%] egress %REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ_WITHOUT_QUERY(:PATH)% route=%ROUTE_NAME% %RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION%ms\\n"
                formatters:
                - name: envoy.formatter.req_without_query
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery
          route_config:
            name: egress
            virtual_hosts:
            - name: egress
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                  headers:
                  - name: ":authority"
                    invert_match: true
                    string_match: {{ safe_regex: {{ regex: "{AUTHORITY_REGEX}" }} }}
                direct_response: {{ status: 400, body: {{ inline_string: "bad destination" }} }}
              - name: forward
                match: {{ prefix: "/" }}
                route: {{ cluster: upstream, timeout: 0s }}
                request_headers_to_remove: [proxy-authorization, x-forwarded-proto, x-envoy-internal]
          http_filters:
          - name: envoy.filters.http.credential_injector
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
              overwrite: true
              credential:
                name: envoy.http.injected_credentials.generic
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
                  credential: {{ name: bench, sds_config: {{ path_config_source: {{ path: "{sds}" }} }} }}
                  header: Authorization
                  header_value_prefix: "Bearer "
          - name: envoy.filters.http.dynamic_forward_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig
              dns_cache_config: &dns_cache
                name: egress_dns_cache
                dns_lookup_family: V4_PREFERRED
                max_hosts: 16384
                typed_dns_resolver_config:
                  name: envoy.network.dns_resolver.cares
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
                    resolvers:
                    - socket_address: {{ address: 127.0.0.1, port_value: {dns_port} }}
                    dns_resolver_options:
                      no_default_search_domain: true
              save_upstream_address: true
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  refused-upstream-address:
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules:
                            rules:
{refused}                        - not_rule:
                            or_rules:
                              rules:
{allowed}                    principals:
                    - any: true
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
  clusters:
  - name: upstream
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        dns_cache_config: *dns_cache
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        upstream_http_protocol_options: {{ auto_sni: true, auto_san_validation: true }}
        explicit_http_config: {{ http_protocol_options: {{}} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context: {{ trusted_ca: {{ filename: "{ca}" }} }}
"""


# ---------------------------------------------------------------------------------------------
# Measurement helpers.

def run(*args, env=None):
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout


def wrk(port, lua, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua,
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout

    def latency(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1_000_000}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_us": latency("50"),
        "p99_us": latency("99"),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def percentile(values, q):
    """Nearest rank."""
    values = sorted(values)
    if not values:
        return None
    return values[max(0, math.ceil(q * len(values)) - 1)]


def summary_ms(samples):
    if not samples:
        return {"count": 0}
    ms = [s * 1000 for s in samples]
    return {"count": len(ms), "p50_ms": round(percentile(ms, 0.5), 2),
            "p99_ms": round(percentile(ms, 0.99), 2), "max_ms": round(max(ms), 2)}


def wait_until(what, check, timeout=60, interval=0.1):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what} (last: {last!r})")


def watch_change(proxy, url, expected, trigger, timeout, admin=None, log=None):
    """Runs trigger(), then GETs through the proxy until the echoed Authorization is
    `expected`. `url` is a function of the poll's number (each poll its own path, so that the
    access log can name the route of every poll). Returns (seconds to the first injected
    answer or None when not seen within `timeout`, seconds the trigger took, polls, seconds per
    poll). With `admin`, polling goes on after the first injected answer until the sidecar's
    ext_proc stream counter, read every STATS_EVERY seconds, stands still (the answers no
    longer go through ext_proc); with `log`, every poll is appended to it as
    (path, seconds since the trigger started, injected)."""
    started = time.perf_counter()
    trigger()
    polling = time.perf_counter()
    first = None
    polls = 0
    streams = None
    next_stats = None
    while True:
        path = url(polls)
        _, values = proxy.get(path)
        now = time.perf_counter()
        polls += 1
        injected = values == [expected]
        if log is not None:
            log.append((path, now - started, injected))
        if injected and first is None:
            first = now - started
            if admin is None:
                break
            streams, next_stats, polls_then = admin.stat(EXTPROC_STREAMS), now + STATS_EVERY, polls
        elif first is not None and now >= next_stats and polls > polls_then:
            streams, before = admin.stat(EXTPROC_STREAMS), streams
            if streams == before:
                break
            next_stats, polls_then = now + STATS_EVERY, polls
        if now - started > timeout:
            break
    return first, polling - started, polls, (time.perf_counter() - polling) / polls


def routes_in_access_log(path, marker):
    """{request path: route name} for the access log lines whose path contains `marker`."""
    out = {}
    with open(path, errors="replace") as f:
        for line in f:
            if marker in line:
                m = re.search(r" (/\S*) route=(\S*) ", line)
                if m:
                    out[m.group(1)] = m.group(2)
    return out


# ---------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="throughput runs per configuration, interleaved; medians reported")
    parser.add_argument("--rotations", type=int, default=50)
    parser.add_argument("--additions", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=10,
                        help="seconds a change may take before it counts as a timeout")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    for path in (RUNTA, ENVOY):
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}: run scripts/bench (it builds and installs them)")
    if not shutil.which("wrk"):
        raise SystemExit("missing wrk: run scripts/bench (it installs Debian's wrk)")

    # A SIGTERM (timeout(1), a CI job cancelled) unwinds through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="runta-bench-native-")
    procs = {}
    clients = []

    def start(name, cmd, **kw):
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        procs[name] = subprocess.Popen(cmd, **kw)
        return procs[name]

    def stop(name):
        p = procs.pop(name)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def start_envoy(name, config):
        log = open(os.path.join(work, f"{name}-access.log"), "w")
        try:
            return start(name, [ENVOY, "-c", config, "--concurrency", "1", "--use-dynamic-base-id",
                                "-l", "error", "--log-path", os.path.join(work, f"{name}-envoy.log")],
                         stdout=log)
        finally:
            log.close()

    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "envoy": run(ENVOY, "--version").strip().split()[-1],
        },
        "settings": {"seconds": args.seconds, "connections": args.connections,
                     "rounds": args.rounds, "rules": RULES},
    }
    try:
        # The upstreams' CA and certificate, for every name under bench.test.
        ca_key, ca = os.path.join(work, "ca.key"), os.path.join(work, "ca.pem")
        key, csr, cert = (os.path.join(work, n) for n in ("up.key", "up.csr", "up.pem"))
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
        run("openssl", "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=bench upstream CA",
            "-days", "2", "-out", ca)
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        run("openssl", "req", "-new", "-key", key, "-subj", "/CN=bench.test", "-out", csr)
        ext = os.path.join(work, "ext.cnf")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:*.bench.test\n")
        run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", cert)

        # The direct-response upstream (throughput) and the echo upstream (injection checks,
        # change latencies); the DNS stub.
        up_port = free_port()
        up_config = os.path.join(work, "upstream.yaml")
        with open(up_config, "w") as f:
            f.write(upstream_config(up_port, cert, key, os.path.join(work, "up-admin.sock")))
        start("upstream", [ENVOY, "-c", up_config, "--concurrency", "1", "--use-dynamic-base-id",
                           "-l", "error"])
        # TCP_NODELAY on its connections: it writes headers and body separately, and Nagle's
        # algorithm against Envoy's delayed ACK would hold every answer ~40 ms.
        nodelay = ("import runpy, socketserver, sys; "
                   "socketserver.StreamRequestHandler.disable_nagle_algorithm = True; "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
        echo = start("echo", [sys.executable, "-c", nodelay, ECHO, cert, key,
                              os.path.join(work, "echo.log")],
                     stdout=subprocess.PIPE, text=True)
        echo_port = int(echo.stdout.readline())
        dns = start("dns", [sys.executable, DNS_STUB, "0", "127.0.0.1"], stdout=subprocess.PIPE,
                    text=True)
        dns_port = int(dns.stdout.readline())

        # runta, the secrets and the rules.
        data = os.path.join(work, "data")
        grpc, admin_port = free_port(), free_port()
        env = dict(os.environ, RUNTA_LOG__LEVEL=os.environ.get("BENCH_RUNTA_LOG", "warn"),
                   RUNTA_API_URL=f"http://127.0.0.1:{admin_port}")
        env.pop("RUNTA_API_KEY", None)
        runta_log = open(os.path.join(work, "runta.log"), "w")
        runta = start("runta", [RUNTA, "serve", "--data-dir", data, "--grpc-listen",
                                f"127.0.0.1:{grpc}", "--admin-listen", f"127.0.0.1:{admin_port}"],
                      env=env, stderr=runta_log)
        runta_log.close()
        wait_port(admin_port)
        wait_port(grpc)
        api = Api(admin_port, open(os.path.join(data, "api-key")).read().strip())
        started = time.time()
        for i in range(RULES):
            api.call("POST", "/v1/secrets", {"name": f"k{i}", "value": secret_value(i),
                                             "cache_ttl_secs": 3600})
        rules = [{"runtime": RUNTIME, "host": host(i), "credential": f"k{i}",
                  "inject": {"header": "Authorization", "value": TEMPLATE}} for i in range(RULES)]
        api.call("POST", "/v1/rules/batch", {"rules": rules})  # MAX_BATCH is 1,000
        results["settings"]["setup_s"] = round(time.time() - started, 2)
        token = api.call("POST", f"/v1/runtimes/{RUNTIME}/tokens")["token"]

        # The three Envoys.
        def bootstrap(name, *extra):
            port = free_port()
            config = os.path.join(work, f"{name}.yaml")
            admin = os.path.join(work, f"{name}-admin.sock")
            run(RUNTA, "envoy", "bootstrap", "--mode", "sidecar", "--runtime", RUNTIME, *extra,
                "--runtime-token", token, "--listen", f"127.0.0.1:{port}", "--ca-bundle", ca,
                "--dns-resolver", f"127.0.0.1:{dns_port}", "--admin-socket", admin,
                "--extproc-address", f"127.0.0.1:{grpc}",
                "--allow-upstream-address", f"127.0.0.1:{up_port}",
                "--allow-upstream-address", f"127.0.0.1:{echo_port}",
                "--data-dir", data, "--out", config, env=env)
            return port, config, admin

        sds = os.path.join(work, "secret.yaml")
        with open(sds, "w") as f:
            f.write("resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n"
                    f"  name: bench\n  generic_secret: {{ secret: {{ inline_string: \"{secret_value(TARGET)}\" }} }}\n")
        ci_port = free_port()
        ci_admin = os.path.join(work, "credential_injector-admin.sock")
        ci_config = os.path.join(work, "credential_injector.yaml")
        with open(ci_config, "w") as f:
            f.write(credential_injector_config(ci_port, ci_admin, sds, ca, dns_port,
                                               [up_port, echo_port]))
        envoys = {"credential_injector": (ci_port, ci_config, ci_admin)}
        envoys["native"] = bootstrap("native")
        envoys["extproc"] = bootstrap("extproc", "--injection", "extproc")
        for name, (_, config, _) in envoys.items():
            start_envoy(name, config)
        admins = {name: EnvoyAdmin(admin) for name, (_, _, admin) in envoys.items()}
        clients.extend(admins.values())
        wait_port(up_port)

        # Every configuration injects k7's value for api7, checked once through the echo
        # upstream (the native sidecar's listener opens once its routes are in).
        expected = f"Bearer {secret_value(TARGET)}"
        echo_url = f"http://{host(TARGET)}:{echo_port}/v1/x"
        for name, (port, _, _) in envoys.items():
            wait_port(port, timeout=60)
            proxy = Proxy(port)
            clients.append(proxy)
            seen = []

            def injected():
                seen.append(proxy.get(echo_url))
                return seen[-1] == (200, [expected])
            try:
                wait_until(f"{name} to inject", injected, timeout=30)
            except SystemExit:
                raise SystemExit(f"{name}: expected 200 with Authorization {expected!r}, "
                                 f"got {seen[-1:] or 'no answer'}")
        # A request through each sidecar, before and after: native opened no ext_proc stream.
        checks = {}
        for name in ("native", "extproc"):
            before = admins[name].stat(EXTPROC_STREAMS)
            got = Proxy(envoys[name][0]).get(f"http://{host(500)}:{echo_port}/v1/y")
            checks[name] = {"injected": got == (200, [f"Bearer {secret_value(500)}"]),
                            "extproc_streams": admins[name].stat(EXTPROC_STREAMS) - before}
        results["injection_check"] = checks
        print(f"injection check (api500 through the echo upstream): {checks}", file=sys.stderr)

        # 1. Throughput.
        lua = os.path.join(work, "request.lua")
        authority = f"{host(TARGET)}:{up_port}"
        with open(lua, "w") as f:
            f.write(f'wrk.method = "GET"\nwrk.path = "http://{authority}/v1/x"\n'
                    f'wrk.headers["Host"] = "{authority}"\n')
        for name, (port, _, _) in envoys.items():
            warm = wrk(port, lua, 2, args.connections)
            if warm["non2xx"] or warm["socket_errors"] or not warm["requests"]:
                raise SystemExit(f"{name}: warm-up failed: {warm}")
        runs = {name: [] for name in envoys}
        for round_ in range(args.rounds):
            for name, (port, _, _) in envoys.items():
                envoy_pid = procs[name].pid
                streams = admins[name].stat(EXTPROC_STREAMS)
                envoy_cpu, runta_cpu = cpu_seconds(envoy_pid), cpu_seconds(runta.pid)
                r = wrk(port, lua, args.seconds, args.connections)
                envoy_cpu = cpu_seconds(envoy_pid) - envoy_cpu
                runta_cpu = cpu_seconds(runta.pid) - runta_cpu
                n = max(r["requests"], 1)
                r["envoy_cpu_us_per_request"] = round(envoy_cpu / n * 1e6, 2)
                r["runta_cpu_us_per_request"] = round(runta_cpu / n * 1e6, 2)
                r["extproc_streams_per_request"] = round((admins[name].stat(EXTPROC_STREAMS) - streams) / n, 3)
                runs[name].append(r)
                print(f"round {round_ + 1} {name:19} {r}", file=sys.stderr)
        throughput = {}
        for name, rs in runs.items():
            row = {k: statistics.median(r[k] for r in rs) for k in
                   ("rps", "p50_us", "p99_us", "envoy_cpu_us_per_request", "runta_cpu_us_per_request",
                    "extproc_streams_per_request")}
            row["requests"] = sum(r["requests"] for r in rs)
            row["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in rs)
            row["rps_all_rounds"] = [r["rps"] for r in rs]
            throughput[name] = row
        results["throughput"] = throughput
        ci, nat, ext = throughput["credential_injector"], throughput["native"], throughput["extproc"]
        results["ratios"] = {
            "native_vs_credential_injector_rps": round(nat["rps"] / ci["rps"], 3),
            "extproc_vs_credential_injector_rps": round(ext["rps"] / ci["rps"], 3),
            "native_vs_extproc_rps": round(nat["rps"] / ext["rps"], 3),
            "native_vs_extproc_envoy_cpu_per_request":
                round(nat["envoy_cpu_us_per_request"] / ext["envoy_cpu_us_per_request"], 3),
            "native_vs_credential_injector_envoy_cpu_per_request":
                round(nat["envoy_cpu_us_per_request"] / ci["envoy_cpu_us_per_request"], 3),
            "native_vs_extproc_envoy_plus_runta_cpu_per_request": round(
                (nat["envoy_cpu_us_per_request"] + nat["runta_cpu_us_per_request"])
                / (ext["envoy_cpu_us_per_request"] + ext["runta_cpu_us_per_request"]), 3),
        }

        # 2 and 3. Changes, native sidecar first, then (the native sidecar stopped) the ext_proc
        # sidecar as the baseline.
        changes = {"rotation": {}, "rule_add": {}}
        counter = [0]

        def rotations(name):
            proxy = Proxy(envoys[name][0])
            clients.append(proxy)
            firsts, triggers, polls, poll_s, timeouts = [], [], [], [], 0
            streams = admins[name].stat(EXTPROC_STREAMS)
            for _ in range(args.rotations):
                counter[0] += 1
                value = f"sk-rotated-{counter[0]}-{random_tokens.token_hex(8)}"
                first, trig, n, per_poll = watch_change(
                    proxy, lambda k: echo_url, f"Bearer {value}",
                    lambda: api.call("PUT", f"/v1/secrets/k{TARGET}", {"value": value}),
                    args.timeout)
                triggers.append(trig)
                polls.append(n)
                poll_s.append(per_poll)
                if first is None:
                    timeouts += 1
                else:
                    firsts.append(first)
            return {"injected": summary_ms(firsts), "admin_call": summary_ms(triggers),
                    "timeouts": timeouts, "polls_median": statistics.median(polls),
                    "poll_ms_median": round(statistics.median(poll_s) * 1000, 2),
                    "extproc_streams_opened": admins[name].stat(EXTPROC_STREAMS) - streams}

        def additions(name, native):
            proxy = Proxy(envoys[name][0])
            clients.append(proxy)
            firsts, triggers, polls, poll_s, timeouts, logs = [], [], [], [], 0, []
            for _ in range(args.additions):
                counter[0] += 1
                n = counter[0]
                secret = secret_value(100_000 + n)
                api.call("POST", "/v1/secrets", {"name": f"fresh{n}", "value": secret,
                                                 "cache_ttl_secs": 3600})
                new_host = f"new{n}.bench.test"
                base = f"http://{new_host}:{echo_port}/v1/add{n}"
                status, values = proxy.get(f"{base}/warm")  # DNS, the upstream connection
                if status != 200 or values:
                    raise SystemExit(f"{name}: {new_host} before its rule: {status} {values}")
                time.sleep(0.05)
                log = []
                first, trig, k, per_poll = watch_change(
                    proxy, lambda k: f"{base}/{k}", f"Bearer {secret}",
                    lambda: api.call("POST", f"/v1/runtimes/{RUNTIME}/rules", {
                        "host": new_host,
                        "injection": {"credential": f"fresh{n}", "header": "Authorization",
                                      "value": TEMPLATE}}),
                    args.timeout, admins[name] if native else None, log)
                logs.append(log)
                triggers.append(trig)
                polls.append(k)
                poll_s.append(per_poll)
                if first is None:
                    timeouts += 1
                else:
                    firsts.append(first)
            out = {"injected": summary_ms(firsts), "admin_call": summary_ms(triggers),
                   "timeouts": timeouts, "polls_median": statistics.median(polls),
                   "poll_ms_median": round(statistics.median(poll_s) * 1000, 2)}
            return out, logs

        changes["rotation"]["native"] = rotations("native")
        print(f"rotation native: {changes['rotation']['native']}", file=sys.stderr)
        add_native, polls_log = additions("native", True)
        # Stopping Envoy flushes its access log: which route answered every poll.
        admins["native"].close()
        stop("native")
        routes = routes_in_access_log(os.path.join(work, "native-access.log"), "/v1/add")
        natives, unknown, not_native = [], 0, 0
        for log in polls_log:
            times = []
            for path, t, injected in log:
                route = routes.get(path.split(str(echo_port), 1)[1])
                if route is None:
                    unknown += 1
                elif injected and route.startswith("rule:"):
                    times.append(t)
            if times:
                natives.append(min(times))
            else:
                not_native += 1
        add_native["native"] = summary_ms(natives)
        add_native["native_not_seen"] = not_native
        add_native["polls_missing_from_access_log"] = unknown
        changes["rule_add"]["native"] = add_native
        print(f"rule add native: {add_native}", file=sys.stderr)
        changes["rotation"]["extproc"] = rotations("extproc")
        print(f"rotation extproc: {changes['rotation']['extproc']}", file=sys.stderr)
        changes["rule_add"]["extproc"], _ = additions("extproc", False)
        print(f"rule add extproc: {changes['rule_add']['extproc']}", file=sys.stderr)
        results["changes"] = changes
        results["settings"]["rules_at_end"] = RULES + args.additions * 2
    except BaseException:
        # What the servers said, before their files go.
        for log in ("runta.log", "native-envoy.log", "extproc-envoy.log",
                    "credential_injector-envoy.log"):
            path = os.path.join(work, log)
            if os.path.exists(path) and os.path.getsize(path):
                with open(path, errors="replace") as f:
                    print(f"--- {log} (tail)\n{''.join(f.readlines()[-20:])}", file=sys.stderr)
        raise
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:
                pass
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept the working directory (BENCH_KEEP): {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


def report(results, args):
    t, r, m = results["throughput"], results["ratios"], results["machine"]
    print(f"\nNative injection in a sidecar: Envoy {m['envoy']}, one worker, {m['cpus']} CPUs "
          f"(1-minute load average {m['loadavg_at_start'][0]} at the start, "
          f"{m['loadavg_at_end'][0]} at the end); runtime '{RUNTIME}' with "
          f"{RULES:,} rules on {RULES:,} hosts")
    print(f"\nThroughput: wrk -t1 -c{args.connections}, {args.rounds} rounds of {args.seconds} s, "
          f"medians (CPU in microseconds per request)")
    print(f"{'':21} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'Envoy CPU':>10} {'runta CPU':>10} "
          f"{'ext_proc/req':>12} {'errors':>7}")
    for name in ("credential_injector", "native", "extproc"):
        row = t[name]
        print(f"{name:21} {row['rps']:9.0f} {row['p50_us'] / 1000:8.3f} {row['p99_us'] / 1000:8.3f} "
              f"{row['envoy_cpu_us_per_request']:10.1f} {row['runta_cpu_us_per_request']:10.1f} "
              f"{row['extproc_streams_per_request']:12.3f} {row['errors']:7d}")
    print(f"\nnative / credential_injector req/s:   {r['native_vs_credential_injector_rps']:.3f}"
          f"   (issue's target: >= 0.9)")
    print(f"extproc / credential_injector req/s:  {r['extproc_vs_credential_injector_rps']:.3f}")
    print(f"native / extproc req/s:               {r['native_vs_extproc_rps']:.3f}")
    print(f"native / extproc Envoy CPU per req:   {r['native_vs_extproc_envoy_cpu_per_request']:.3f}"
          f"   (issue's target: <= 0.4)")
    print(f"native / extproc Envoy+runta CPU/req: "
          f"{r['native_vs_extproc_envoy_plus_runta_cpu_per_request']:.3f}")
    print(f"native / credential_injector Envoy CPU per req: "
          f"{r['native_vs_credential_injector_envoy_cpu_per_request']:.3f}")
    for name in ("native", "extproc"):
        if t[name]["errors"]:
            print(f"note: {name} had {t[name]['errors']} non-2xx answers or socket errors")
    c = results["changes"]

    def line(label, s):
        if not s.get("count"):
            return f"{label:34} not measured (no sample)"
        return (f"{label:34} p50 {s['p50_ms']:8.2f} ms  p99 {s['p99_ms']:8.2f} ms  "
                f"max {s['max_ms']:8.2f} ms  (n={s['count']})")
    rot, add = c["rotation"], c["rule_add"]
    print(f"\nSecret rotation -> injected ({args.rotations} rotations of k{TARGET}), from before the "
          f"PUT to the first answer carrying the new value:")
    print(line("native sidecar", rot["native"]["injected"]))
    print(line("ext_proc sidecar (baseline)", rot["extproc"]["injected"]))
    print(line("the PUT itself", rot["native"]["admin_call"]))
    streams = rot["native"]["extproc_streams_opened"]
    print(f"the native sidecar's polls opened {streams} ext_proc streams"
          + (" (every injected answer was native)" if streams == 0 else
             " (some answers went through ext_proc: the figure is not purely native)"))
    print(f"\nRule added -> injected ({args.additions} additions, a new host and secret each, "
          f"{RULES:,}+ rules in the runtime), from before the POST:")
    print(line("native sidecar, first injected", add["native"]["injected"]))
    print(line("native sidecar, natively", add["native"]["native"]))
    print(line("ext_proc sidecar (baseline)", add["extproc"]["injected"]))
    print(line("the POST itself", add["native"]["admin_call"]))
    print("  (first injected: by whichever path, ext_proc serving the new host until its route "
          "arrives; natively: the first injected answer Envoy's access log shows on a compiled "
          "route)")
    if add["native"]["native_not_seen"]:
        print(f"note: {add['native']['native_not_seen']} additions never answered natively within "
              f"the polling (left out of 'natively')")
    if add["native"]["polls_missing_from_access_log"]:
        print(f"note: {add['native']['polls_missing_from_access_log']} polls missing from the "
              f"native sidecar's access log")
    for what, d in (("rotation", rot), ("rule add", add)):
        for name in ("native", "extproc"):
            if d[name]["timeouts"]:
                print(f"note: {what}, {name}: {d[name]['timeouts']} changes not seen within "
                      f"{args.timeout:g} s (left out of the percentiles)")
    print(f"\none poll (a GET through the sidecar to the echo upstream), median: rotation "
          f"{rot['native']['poll_ms_median']:.2f} / {rot['extproc']['poll_ms_median']:.2f} ms, rule add "
          f"{add['native']['poll_ms_median']:.2f} / {add['extproc']['poll_ms_median']:.2f} ms "
          f"(native / ext_proc sidecar; the native rule-add polls also read Envoy's stats every "
          f"{STATS_EVERY * 1000:.0f} ms once injected)")


if __name__ == "__main__":
    main()
