#!/usr/bin/env python3
"""Rule changes at scale: what a change through the admin API costs with many rules loaded.

For each backend (SQLite, PostgreSQL or both) and each binary (--binary, and --baseline when
given), one stack of `runta serve` processes is started on a store of its own (SQLite: a data
directory each; PostgreSQL: one throwaway cluster, a database per binary), and measured:

  load              RULES rules through POST /v1/rules/batch, batches of MAX_BATCH (1,000)
                    rules, rule i going to runtime rt-(i mod RUNTIMES), so every batch touches
                    every runtime (the shape of a bulk import). Reported: the load time (the
                    sum of the batch calls), the rate, the mean time of the first 10 and the last
                    10 batches and of each tenth of the load: a batch must not cost more when
                    more is loaded. --max-load-seconds stops a load that takes too long (the
                    rest is then measured at the count reached, and the output says so).
  rule create       COUNT single creates (POST /v1/runtimes/{rt}/rules), one after another,
                    each answered once the change is applied: p50/p99/max.
  rule delete       the COUNT single-created rules deleted one after another: p50/p99/max.
  token create      COUNT runtime token creates, one after another: p50/p99/max.
  sustained         wrk (scripts/lib/bench_creates.lua), --sustained-connections (16)
                    connections creating rules (a host each, spread over the runtimes) for
                    --sustained-seconds: creates per second, p50/p99 of the calls, errors
                    (answers other than 2xx, socket errors).
  memory            VmRSS (and peak VmHWM) of the server process after the load and 3 s after
                    it is ready again on the same store (a fresh full load: the honest figure,
                    settled), and the restart's time to ready.
  replicas          PostgreSQL only: --replicas servers on the same database (A measured
                    above, B, C... started afterwards). A rule created through A; a poller
                    per other replica reads its /metrics (`runta_rules_loaded`) every
                    --poll-interval (1 ms) over a kept-alive connection until it increments.
                    p50/p99 over COUNT creates of the time from sending the create to visible
                    on each replica (and on all of them), then the same for deleting those
                    rules. Not a tight loop: two Python pollers asking as fast as they can took
                    a core of the two, at normal priority, from the replicas' admin threads
                    (niced) that answer the write and the polls, and the p99 measured them
                    (create visible p99 72-153 ms in a tight loop, 13 ms polling every ms).

Every latency is measured by the client, over a kept-alive HTTP/1.1 connection (one per thread),
from sending the request to reading the whole answer. Percentiles are nearest-rank (with 50
samples, p99 is the maximum).

With --baseline, every figure is measured for both binaries in one run: both stacks run at the
same time and the one not being measured is frozen (SIGSTOP), so it neither competes for the
CPUs nor runs its periodic reload meanwhile; load batches alternate one by one, the one-at-a-time
figures alternate in blocks of COUNT/5 calls, the rest alternate phase by phase. The table gives
the ratio new / baseline.

The PostgreSQL cluster is started like scripts/lib/postgres.sh's start_postgres (initdb as the
`postgres` user when run as root, fsync=off, synchronous_commit=off, full_page_writes=off
unless --pg-durable) and stopped at the end; each server gets an encryption key, an operator
token and a gateway token through a --config file, and a tenant `bench` is created with the
operator token. SQLite runs the embedded default (its `default` tenant). Servers log at `warn`
into the work directory, which is removed at the end (--keep keeps it). Every server and the
cluster are stopped at the end, also on failure or SIGTERM. The machine's cores are shared by the
client, the servers and PostgreSQL; nothing is pinned.

Output: per backend, a table (figure, value per binary, ratio new/baseline) on standard output,
progress on standard error, and with --json FILE everything, including every batch's time.

usage: python3 scripts/bench_changes.py [--binary PATH] [--baseline PATH]
           [--backend sqlite|postgres|both] [--rules N] [--runtimes N] [--count N]
           [--replicas N] [--sustained-seconds S] [--sustained-connections N]
           [--max-load-seconds S] [--poll-interval S]
           [--keep] [--json FILE]
"""
import argparse
import concurrent.futures
import contextlib
import http.client
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BINARY = os.path.join(ROOT, "target", "release", "runta")
MAX_BATCH = 1000  # src/admin/rules.rs, MAX_BATCH
SECRET_NAME = "k"


# --------------------------------------------------------------------------------------------
# Shared helpers (scripts/bench_churn.py imports these)
# --------------------------------------------------------------------------------------------

def count_arg(text):
    """An integer that may be written 1,000,000 or 1_000_000."""
    return int(text.replace(",", "").replace("_", ""))


def log(message):
    print(message, file=sys.stderr, flush=True)


_handed_out = set()


def free_port():
    """A free port on 127.0.0.1 (bound to port 0, then released), never one handed out before."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def percentile(values, p):
    """Nearest-rank percentile of a list (None if empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1))]


def latency_summary(seconds):
    """p50/p99/max in milliseconds of a list of durations in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 3) if ms else None,
        "p99_ms": round(percentile(ms, 0.99), 3) if ms else None,
        "max_ms": round(max(ms), 3) if ms else None,
    }


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


class ApiError(Exception):
    def __init__(self, method, path, status, body):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]!r}")
        self.status = status


class Api:
    """One kept-alive HTTP/1.1 connection to a server's admin API. One per thread."""

    RETRYABLE = (http.client.RemoteDisconnected, http.client.CannotSendRequest,
                 http.client.BadStatusLine, ConnectionResetError, BrokenPipeError)

    def __init__(self, port, key=None, timeout=900):
        self.port, self.key, self.timeout = port, key, timeout
        self.conn = None
        self.last_seconds = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def raw(self, method, path, body=None, key=None):
        """(status, body bytes). A connection the server closed is reopened once."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"}
        key = key or self.key
        if key:
            headers["authorization"] = f"Bearer {key}"
        started = time.perf_counter()
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                payload = response.read()
            except self.RETRYABLE:
                self.close()
                if attempt:
                    raise
                continue
            self.last_seconds = time.perf_counter() - started
            if response.will_close:
                self.close()
            return response.status, payload

    def call(self, method, path, body=None, key=None):
        status, payload = self.raw(method, path, body, key)
        if status not in (200, 201, 204):
            raise ApiError(method, path, status, payload)
        return json.loads(payload) if payload else None

    def timed(self, method, path, body=None):
        """(seconds, answer): the time from sending the request to reading the whole answer
        (the client's JSON encoding before and decoding after are not the server's time)."""
        answer = self.call(method, path, body)
        return self.last_seconds, answer

    def metric(self, name):
        """A metric without labels from /metrics, as a float (None if absent)."""
        status, payload = self.raw("GET", "/metrics")
        if status != 200:
            raise ApiError("GET", "/metrics", status, payload)
        found = re.search(rb"^" + re.escape(name.encode()) + rb"(?:\{\})? (\S+)$", payload, re.M)
        return float(found.group(1)) if found else None

    def metrics_text(self):
        return self.raw("GET", "/metrics")[1].decode()


def metric_sum(text, name, labels=None):
    """The sum of a metric's samples in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        total += float(value)
    return total


def proc_memory(pid):
    """VmRSS and VmHWM of a process, in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def runta_free_env(extra=None):
    """The environment for a server: ours without any RUNTA_* setting, logging at warn."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTA_")}
    env["RUNTA_LOG__LEVEL"] = "warn"
    env.update(extra or {})
    return env


class Server:
    """One `runta serve` process on fresh ports, logging into a file."""

    def __init__(self, binary, name, work, database_url=None, config=None, env=None):
        self.binary, self.name = binary, name
        self.data_dir = os.path.join(work, name)
        os.makedirs(self.data_dir, exist_ok=True)
        self.log_path = os.path.join(work, f"{name}.log")
        self.database_url, self.config, self.env = database_url, config, env or {}
        self.proc = None
        self.frozen = False
        self.startup_s = None

    def start(self, ready_timeout):
        self.admin_port, self.grpc_port = free_port(), free_port()
        cmd = [self.binary, "serve", "--data-dir", self.data_dir,
               "--admin-listen", f"127.0.0.1:{self.admin_port}",
               "--grpc-listen", f"127.0.0.1:{self.grpc_port}"]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        if self.config:
            cmd += ["--config", self.config]
        started = time.perf_counter()
        with open(self.log_path, "ab") as logfile:
            self.proc = subprocess.Popen(cmd, env=runta_free_env(self.env),
                                         stdin=subprocess.DEVNULL, stdout=logfile,
                                         stderr=subprocess.STDOUT)
        self.frozen = False
        deadline = started + ready_timeout
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} ({self.binary}) exited with {self.proc.returncode} "
                                   f"before it was ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} not ready after {ready_timeout} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)
        self.startup_s = time.perf_counter() - started
        return self

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def memory(self):
        return proc_memory(self.proc.pid)

    def freeze(self):
        if self.alive() and not self.frozen:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.frozen = True

    def thaw(self):
        if self.alive() and self.frozen:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.frozen = False

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.frozen = False


def pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    versions = "/usr/lib/postgresql"
    for directory in sorted(os.listdir(versions), reverse=True) if os.path.isdir(versions) else []:
        path = os.path.join(versions, directory, "bin", name)
        if os.access(path, os.X_OK):
            return path
    raise SystemExit(f"PostgreSQL binary {name} not found (Debian: postgresql-15)")


def as_owner(cmd):
    """initdb refuses root: as root, the cluster belongs to the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


class Postgres:
    """A throwaway cluster, as scripts/lib/postgres.sh's start_postgres makes one."""

    def __init__(self, durable=False):
        self.durable = durable
        self.dir = None

    def start(self):
        initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        self.createdb = pg_bin("createdb")
        self.dir = tempfile.mkdtemp(prefix="runta-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        data = os.path.join(self.dir, "data")
        result = subprocess.run(as_owner([initdb, "-D", data, "-U", "postgres", "--auth=trust",
                                          "--encoding=UTF8", "--no-sync"]),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout[-2000:]}")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
                   "-c max_connections=400")
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        server_log = os.path.join(self.dir, "server.log")
        result = subprocess.run(as_owner([self.pg_ctl, "-D", data, "-l", server_log,
                                          "-w", "-t", "60", "-o", options, "start"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            with open(server_log, errors="replace") as f:
                raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{f.read()[-2000:]}")
        log(f"PostgreSQL on 127.0.0.1:{self.port} ({self.dir})")
        return self

    def database(self, name):
        subprocess.run([self.createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        name], check=True)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        if not self.dir:
            return
        subprocess.run(as_owner([self.pg_ctl, "-D", os.path.join(self.dir, "data"),
                                 "-m", "immediate", "-w", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


def generate_key(binary):
    """A master key for `encryption.keys`, from `runta keys generate`."""
    return subprocess.run([binary, "keys", "generate"], check=True, capture_output=True,
                          text=True).stdout.strip()


def install_sigterm_handler():
    """SIGTERM ends the script through its finally blocks, as Ctrl-C does."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


class Switcher:
    """With several stacks, only the one being measured runs; the others are frozen."""

    def __init__(self, stacks):
        self.stacks = stacks

    @contextlib.contextmanager
    def active(self, stack):
        if len(self.stacks) > 1:
            for other in self.stacks:
                if other is not stack:
                    other.freeze()
            stack.thaw()
        yield stack


def fmt(value, digits):
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def print_table(title, rows, labels):
    """rows: (name, digits, {label: value}); with two labels, a ratio column first/second."""
    print(f"\n== {title} ==")
    header = f"{'':44}" + "".join(f"{label:>16}" for label in labels)
    if len(labels) == 2:
        header += f"{labels[0] + '/' + labels[1]:>16}"
    print(header)
    for name, digits, values in rows:
        line = f"{name:44}" + "".join(f"{fmt(values.get(label), digits):>16}" for label in labels)
        if len(labels) == 2:
            a, b = values.get(labels[0]), values.get(labels[1])
            numbers = all(isinstance(x, (int, float)) for x in (a, b))
            ratio = f"{a / b:.2f}x" if numbers and b else "—"
            line += f"{ratio:>16}"
        print(line)


# --------------------------------------------------------------------------------------------
# bench_changes
# --------------------------------------------------------------------------------------------

class Stack:
    """One binary's servers on one backend: the primary (A) and, on PostgreSQL, more replicas."""

    def __init__(self, label, binary, backend, work, args, database_url=None, config=None):
        self.label, self.binary, self.backend, self.args = label, binary, backend, args
        self.work = os.path.join(work, f"{backend}-{label}")
        os.makedirs(self.work, exist_ok=True)
        self.database_url, self.config = database_url, config
        self.servers = []
        self.key = None
        self.results = {}
        self.batch_times = []
        self.loaded = 0
        self.load_stopped = False
        self.single_ids = []

    @property
    def primary(self):
        return self.servers[0]

    def start_server(self, index):
        server = Server(self.binary, f"replica-{chr(ord('a') + index)}", self.work,
                        self.database_url, self.config)
        self.servers.append(server)
        return server.start(self.args.ready_timeout)

    def api(self, server=None):
        return Api((server or self.primary).admin_port, self.key)

    def setup(self, operator_token):
        """The tenant's API key and its secret."""
        if self.backend == "sqlite":
            with open(os.path.join(self.primary.data_dir, "api-key")) as f:
                self.key = f.read().strip()
        else:
            created = Api(self.primary.admin_port).call("POST", "/v1/tenants", {"name": "bench"},
                                                         key=operator_token)
            self.key = created["api_key"]
        self.client = self.api()
        self.client.call("POST", "/v1/secrets", {"name": SECRET_NAME, "value": "v"})

    def freeze(self):
        for server in self.servers:
            server.freeze()

    def thaw(self):
        for server in self.servers:
            server.thaw()

    def stop(self):
        for server in self.servers:
            server.stop()


def load_batch(first, count, runtimes):
    return [{"runtime": f"rt-{i % runtimes}", "host": f"h{i}.example.com",
             "credential": SECRET_NAME, "inject": {"header": "x-k"}}
            for i in range(first, first + count)]


def phase_load(stacks, switch, args):
    log(f"loading {args.rules:,} rules in batches of {MAX_BATCH}")
    reported = 0
    for first in range(0, args.rules, MAX_BATCH):
        rules = load_batch(first, min(MAX_BATCH, args.rules - first), args.runtimes)
        for stack in stacks:
            if stack.load_stopped:
                continue
            with switch.active(stack):
                seconds, _ = stack.client.timed("POST", "/v1/rules/batch", {"rules": rules})
            stack.batch_times.append(seconds)
            stack.loaded += len(rules)
            if args.max_load_seconds and sum(stack.batch_times) > args.max_load_seconds:
                stack.load_stopped = True
                log(f"  {stack.label}: load stopped after {sum(stack.batch_times):.0f} s "
                    f"at {stack.loaded:,} rules (--max-load-seconds)")
        if all(s.load_stopped for s in stacks):
            break
        done = min(args.rules, first + MAX_BATCH)
        if done * 10 // args.rules > reported:
            reported = done * 10 // args.rules
            log(f"  {done:,} rules: " + ", ".join(
                f"{s.label} {sum(s.batch_times):.1f} s, "
                f"last batch {s.batch_times[-1] * 1000:.0f} ms" for s in stacks))
    for stack in stacks:
        times = stack.batch_times
        total = sum(times)
        tenths = []
        for tenth in range(10):
            part = times[len(times) * tenth // 10: len(times) * (tenth + 1) // 10]
            tenths.append(round(sum(part) / len(part) * 1000, 2) if part else None)
        stack.results["load"] = {
            "rules": stack.loaded,
            "complete": stack.loaded == args.rules,
            "batches": len(times),
            "seconds": round(total, 2),
            "rules_per_s": round(stack.loaded / total, 1) if total else None,
            "first10_batch_ms": round(sum(times[:10]) / len(times[:10]) * 1000, 2),
            "last10_batch_ms": round(sum(times[-10:]) / len(times[-10:]) * 1000, 2),
            "batch_ms_by_tenth": tenths,
            "batch_ms": [round(t * 1000, 2) for t in times],
        }
        with switch.active(stack):
            stack.results["memory_after_load"] = stack.primary.memory()
            stack.results["rules_loaded_metric"] = stack.client.metric("runta_rules_loaded")


def interleaved(stacks, switch, count, fn, blocks=5):
    """fn(stack, i) for i in range(count), per stack; stacks alternate in `blocks` blocks."""
    size = max(1, math.ceil(count / blocks))
    for start in range(0, count, size):
        for stack in stacks:
            with switch.active(stack):
                for i in range(start, min(count, start + size)):
                    fn(stack, i)


def phase_one_at_a_time(stacks, switch, args):
    creates = {s.label: [] for s in stacks}
    deletes = {s.label: [] for s in stacks}
    tokens = {s.label: [] for s in stacks}

    def create(stack, i):
        seconds, rule = stack.client.timed(
            "POST", f"/v1/runtimes/rt-{i % args.runtimes}/rules",
            {"host": f"new{i}.example.com",
             "injection": {"credential": SECRET_NAME, "header": "x-n"}})
        creates[stack.label].append(seconds)
        stack.single_ids.append(rule["id"])

    def token(stack, i):
        seconds, _ = stack.client.timed("POST", f"/v1/runtimes/rt-{i % args.runtimes}/tokens")
        tokens[stack.label].append(seconds)

    def delete(stack, i):
        seconds, _ = stack.client.timed("DELETE", f"/v1/rules/{stack.single_ids[i]}")
        deletes[stack.label].append(seconds)

    log(f"single rule creates ({args.count})")
    interleaved(stacks, switch, args.count, create)
    log(f"rule deletes ({args.count})")
    interleaved(stacks, switch, args.count, delete)
    log(f"runtime token creates ({args.count})")
    interleaved(stacks, switch, args.count, token)
    for stack in stacks:
        stack.results["rule_create"] = latency_summary(creates[stack.label])
        stack.results["rule_delete"] = latency_summary(deletes[stack.label])
        stack.results["token_create"] = latency_summary(tokens[stack.label])


def phase_sustained(stacks, switch, args):
    """wrk, not Python threads: on 2 cores a Python client competes with the server for the CPU
    and its GIL adds milliseconds to every call, so it measured itself more than the server."""
    connections = args.sustained_connections
    script = os.path.join(ROOT, "scripts", "lib", "bench_creates.lua")
    for stack in stacks:
        log(f"sustained creates, wrk, {connections} connections, {args.sustained_seconds} s: "
            f"{stack.label}")
        with switch.active(stack):
            out = subprocess.run(
                ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(args.sustained_seconds))}s", "--latency",
                 "-s", script, f"http://127.0.0.1:{stack.primary.admin_port}",
                 "--", f"s-{stack.label}-{secrets.token_hex(4)}", str(args.runtimes)],
                capture_output=True, text=True, check=True,
                env=dict(os.environ, BENCH_API_KEY=stack.key)).stdout
            # wrk stops with calls in flight: they finish before the stack is frozen.
            time.sleep(1)
        stack.results["sustained_create"] = dict(wrk_summary(out), connections=connections,
                                                 seconds=max(1, round(args.sustained_seconds)))


def wrk_summary(out):
    """Requests per second, p50/p99 (ms) and errors (answers other than 2xx/3xx, and socket
    errors) from wrk --latency's output."""
    def latency_ms(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return {
        "per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "errors": errors,
    }


def phase_restart(stacks, switch, args):
    for stack in stacks:
        log(f"restarting {stack.label}'s server on the same store")
        with switch.active(stack):
            stack.primary.stop()
            stack.primary.start(args.ready_timeout)
            stack.client = stack.api()
            # Settled: past runta's idle keep-alive of the blocking threads that ran the load
            # (1 s), which hold what the load freed until they end.
            time.sleep(3)
            stack.results["restart_ready_s"] = round(stack.primary.startup_s, 2)
            stack.results["memory_after_restart"] = stack.primary.memory()
            stack.results["rules_loaded_after_restart"] = stack.client.metric("runta_rules_loaded")


class Poller:
    """Reads one replica's runta_rules_loaded, over a kept-alive connection, until it moves."""

    def __init__(self, port):
        self.api = Api(port)

    def value(self):
        return self.api.metric("runta_rules_loaded")

    def wait_for(self, reached, started, timeout, interval):
        while True:
            if reached(self.value()):
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                return None
            if interval:
                time.sleep(interval)


def phase_replicas(stacks, switch, args):
    for stack in stacks:
        with switch.active(stack):
            for index in range(1, args.replicas):
                log(f"starting {stack.label}'s replica {index + 1} of {args.replicas}")
                server = stack.start_server(index)
                stack.results.setdefault("replica_start", []).append(
                    {"ready_s": round(server.startup_s, 2), "memory": server.memory()})
    if args.replicas < 2:
        return
    state = {}
    for stack in stacks:
        others = stack.servers[1:]
        state[stack.label] = {
            "pollers": [Poller(s.admin_port) for s in others],
            "pool": concurrent.futures.ThreadPoolExecutor(len(others)),
            "create": {"origin": [], "each": [[] for _ in others], "all": [], "timeouts": 0},
            "delete": {"origin": [], "each": [[] for _ in others], "all": [], "timeouts": 0},
            "ids": [],
        }

    def measure(stack, kind, send):
        st = state[stack.label]
        record = st[kind]
        before = [p.value() for p in st["pollers"]]
        delta = 1 if kind == "create" else -1

        def reached(b):  # the count moved by delta from b (a create: +1, a delete: -1)
            return lambda v: v is not None and v * delta >= (b + delta) * delta

        started = time.perf_counter()
        waits = [st["pool"].submit(p.wait_for, reached(b), started, args.visible_timeout,
                                   args.poll_interval)
                 for p, b in zip(st["pollers"], before)]
        record["origin"].append(send())
        seen = [w.result() for w in waits]
        for i, s in enumerate(seen):
            if s is None:
                record["timeouts"] += 1
            else:
                record["each"][i].append(s)
        if all(s is not None for s in seen):
            record["all"].append(max(seen))

    def create(stack, i):
        def send():
            seconds, rule = stack.client.timed(
                "POST", f"/v1/runtimes/rt-{i % args.runtimes}/rules",
                {"host": f"rep{i}.example.com",
                 "injection": {"credential": SECRET_NAME, "header": "x-r"}})
            state[stack.label]["ids"].append(rule["id"])
            return seconds
        measure(stack, "create", send)

    def delete(stack, i):
        rule_id = state[stack.label]["ids"][i]
        measure(stack, "delete", lambda: stack.client.timed("DELETE", f"/v1/rules/{rule_id}")[0])

    try:
        log(f"change visible on the other replicas: {args.count} creates through A")
        interleaved(stacks, switch, args.count, create)
        log(f"change visible on the other replicas: {args.count} deletes through A")
        interleaved(stacks, switch, args.count, delete)
    finally:
        for st in state.values():
            st["pool"].shutdown(wait=False, cancel_futures=True)
    for stack in stacks:
        st = state[stack.label]
        out = {}
        for kind in ("create", "delete"):
            record = st[kind]
            out[kind] = {
                "origin": latency_summary(record["origin"]),
                "each_replica": [latency_summary(each) for each in record["each"]],
                "all_replicas": latency_summary(record["all"]),
                "timeouts": record["timeouts"],
            }
        stack.results["replicas"] = out


def run_backend(backend, binaries, args, work, postgres, out):
    """Measures every binary on this backend; out[label] fills up as the phases finish, so a
    failure half-way still leaves the figures measured before it."""
    config = operator_token = None
    urls = {}
    if backend == "postgres":
        operator_token = "runta_op_" + secrets.token_hex(20)
        config = os.path.join(work, "postgres.toml")
        with open(config, "w") as f:
            key = generate_key(binaries[0][1])
            f.write(f'[encryption]\nkeys = [{{ id = "k1", key = "{key}" }}]\n'
                    f'[admin]\noperator_token = "{operator_token}"\n'
                    f'[grpc]\ngateway_tokens = ["runta_gw_{secrets.token_hex(20)}"]\n')
        for label, _ in binaries:
            urls[label] = postgres.database(f"bench_{label}")
    stacks = [Stack(label, binary, backend, work, args, urls.get(label), config)
              for label, binary in binaries]
    for stack in stacks:
        out[stack.label] = stack.results
    switch = Switcher(stacks)
    try:
        for stack in stacks:
            with switch.active(stack):
                log(f"{backend}: starting {stack.label} ({stack.binary})")
                stack.start_server(0)
                stack.setup(operator_token)
        phase_load(stacks, switch, args)
        phase_one_at_a_time(stacks, switch, args)
        # Last before the restart: wrk hangs up on the calls in flight when it stops, which
        # left the build before the change work (3a2c66f, SQLite) answering "database is
        # locked" to every later write until it restarted.
        phase_sustained(stacks, switch, args)
        phase_restart(stacks, switch, args)
        if backend == "postgres":
            phase_replicas(stacks, switch, args)
        for stack in stacks:
            errors = [s.name for s in stack.servers if not s.alive()]
            if errors:
                log(f"warning: {stack.label}: {errors} no longer running")
    finally:
        for stack in stacks:
            stack.stop()


def report(backend, results, labels, args):
    first = results[labels[0]]
    loaded = {label: results[label]["load"]["rules"] for label in labels}
    title = f"{backend}: {args.rules:,} rules over {args.runtimes:,} runtimes"
    if any(not results[label]["load"]["complete"] for label in labels):
        title += " (load stopped early: " + ", ".join(
            f"{label} {n:,}" for label, n in loaded.items()) + " rules)"
    v = lambda get: {label: get(results[label]) for label in labels}
    rows = [
        ("rules loaded", 0, v(lambda r: r["load"]["rules"])),
        ("load time (s, sum of batch calls)", 1, v(lambda r: r["load"]["seconds"])),
        ("load rate (rules/s)", 0, v(lambda r: r["load"]["rules_per_s"])),
        ("batch, first 10, mean (ms)", 1, v(lambda r: r["load"]["first10_batch_ms"])),
        ("batch, last 10, mean (ms)", 1, v(lambda r: r["load"]["last10_batch_ms"])),
    ]
    for tenth in range(10):
        rows.append((f"  batch mean, tenth {tenth + 1} of the load (ms)", 1,
                     v(lambda r, t=tenth: r["load"]["batch_ms_by_tenth"][t])))
    for key, name in (("rule_create", "rule create"), ("rule_delete", "rule delete"),
                      ("token_create", "runtime token create")):
        n = first[key]["n"]
        rows += [(f"{name} p50 (ms, n={n})", 2, v(lambda r, k=key: r[k]["p50_ms"])),
                 (f"{name} p99 (ms)", 2, v(lambda r, k=key: r[k]["p99_ms"])),
                 (f"{name} max (ms)", 2, v(lambda r, k=key: r[k]["max_ms"]))]
    s = first["sustained_create"]
    rows += [
        (f"sustained creates/s (wrk, {s['connections']} connections)", 1,
         v(lambda r: r["sustained_create"]["per_s"])),
        ("sustained create p50 (ms)", 2, v(lambda r: r["sustained_create"]["p50_ms"])),
        ("sustained create p99 (ms)", 2, v(lambda r: r["sustained_create"]["p99_ms"])),
        ("sustained create errors", 0, v(lambda r: r["sustained_create"]["errors"])),
        ("runta_rules_loaded after the load", 0, v(lambda r: r["rules_loaded_metric"])),
        ("VmRSS after the load (MiB)", 1, v(lambda r: r["memory_after_load"].get("VmRSS"))),
        ("VmHWM (peak) after the load (MiB)", 1,
         v(lambda r: r["memory_after_load"].get("VmHWM"))),
        ("restart: time to ready (s)", 2, v(lambda r: r["restart_ready_s"])),
        ("VmRSS after restart (MiB)", 1, v(lambda r: r["memory_after_restart"].get("VmRSS"))),
        ("VmHWM (peak) after restart (MiB)", 1,
         v(lambda r: r["memory_after_restart"].get("VmHWM"))),
        ("runta_rules_loaded after restart", 0, v(lambda r: r["rules_loaded_after_restart"])),
    ]
    if "replicas" in first:
        for i in range(len(first.get("replica_start", []))):
            rows.append((f"replica {chr(ord('b') + i)}: time to ready (s)", 2,
                         v(lambda r, i=i: r["replica_start"][i]["ready_s"])))
            rows.append((f"replica {chr(ord('b') + i)}: VmRSS when ready (MiB)", 1,
                         v(lambda r, i=i: r["replica_start"][i]["memory"].get("VmRSS"))))
        for kind in ("create", "delete"):
            rep = first["replicas"][kind]
            rows += [(f"{kind} through A, answered, p50 (ms, n={rep['origin']['n']})", 2,
                      v(lambda r, k=kind: r["replicas"][k]["origin"]["p50_ms"])),
                     (f"{kind} through A, answered, p99 (ms)", 2,
                      v(lambda r, k=kind: r["replicas"][k]["origin"]["p99_ms"]))]
            for i in range(len(rep["each_replica"])):
                name = chr(ord("b") + i).upper()
                rows += [(f"{kind} visible on {name}, p50 (ms)", 2,
                          v(lambda r, k=kind, i=i: r["replicas"][k]["each_replica"][i]["p50_ms"])),
                         (f"{kind} visible on {name}, p99 (ms)", 2,
                          v(lambda r, k=kind, i=i: r["replicas"][k]["each_replica"][i]["p99_ms"]))]
            rows += [(f"{kind} visible on all, p50 (ms)", 2,
                      v(lambda r, k=kind: r["replicas"][k]["all_replicas"]["p50_ms"])),
                     (f"{kind} visible on all, p99 (ms)", 2,
                      v(lambda r, k=kind: r["replicas"][k]["all_replicas"]["p99_ms"])),
                     (f"{kind} visible on all, max (ms)", 2,
                      v(lambda r, k=kind: r["replicas"][k]["all_replicas"]["max_ms"])),
                     (f"{kind}: replica waits timed out", 0,
                      v(lambda r, k=kind: r["replicas"][k]["timeouts"]))]
    print_table(title, rows, labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", default=DEFAULT_BINARY, help="the runta binary measured")
    parser.add_argument("--baseline", help="an older runta binary, measured side by side")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rules", type=count_arg, default=1_000_000)
    parser.add_argument("--runtimes", type=count_arg, default=1_000)
    parser.add_argument("--count", type=count_arg, default=200,
                        help="one-at-a-time creates, deletes, token creates, replica changes")
    parser.add_argument("--replicas", type=int, default=3,
                        help="PostgreSQL: servers on one database")
    parser.add_argument("--sustained-seconds", type=float, default=10)
    parser.add_argument("--sustained-connections", type=int, default=16,
                        help="wrk's connections in the sustained phase")
    parser.add_argument("--max-load-seconds", type=float,
                        help="stop a binary's load after this many seconds of batch calls")
    parser.add_argument("--visible-timeout", type=float, default=60,
                        help="seconds to wait for a change to show on another replica")
    parser.add_argument("--poll-interval", type=float, default=0.001,
                        help="seconds between two /metrics polls of a replica "
                             "(0: a tight loop)")
    parser.add_argument("--ready-timeout", type=float, default=1800)
    parser.add_argument("--pg-durable", action="store_true",
                        help="PostgreSQL with fsync and synchronous commit "
                             "(default: off, as the tests run it)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.rules < 1 or args.runtimes < 1 or args.count < 1:
        parser.error("--rules, --runtimes and --count must be at least 1")
    binaries = [("new", os.path.abspath(args.binary))]
    if args.baseline:
        binaries.append(("baseline", os.path.abspath(args.baseline)))
    for _, binary in binaries:
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"not an executable: {binary}")
    if not shutil.which("wrk"):
        raise SystemExit("missing wrk (the sustained phase's load): apt-get install wrk, "
                         "or run scripts/bench, which installs it")
    labels = [label for label, _ in binaries]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    install_sigterm_handler()
    results = {"args": vars(args), "cpus": os.cpu_count(),
               "binaries": dict(binaries), "backends": {}}
    work = tempfile.mkdtemp(prefix="runta-bench-changes-")
    postgres = None
    try:
        for backend in backends:
            if backend == "postgres":
                postgres = Postgres(args.pg_durable)
                postgres.start()
            results["backends"][backend] = {}
            try:
                run_backend(backend, binaries, args, work, postgres, results["backends"][backend])
            finally:
                if postgres:
                    postgres.stop()
                    postgres = None
            report(backend, results["backends"][backend], labels, args)
    except RuntimeError as err:  # a server or the cluster did not start; the message has its log
        raise SystemExit(f"error: {err}")
    finally:
        if postgres:
            postgres.stop()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
                f.write("\n")


if __name__ == "__main__":
    main()
