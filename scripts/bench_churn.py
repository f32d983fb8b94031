#!/usr/bin/env python3
"""ext_proc decision latency while rules churn, against the same server idle, in one run.

Setup, per binary (--binary, and --baseline when given): `runta serve` on SQLite (the embedded
default, logging at `warn`), its generated gateway token trusted to name runtimes
(`grpc.identity_gateways = ["generated"]`, so examples/grpc_load can ask as tenant `default`,
runtime `rt-0`), the secret `openai-api-key` (cached a day), and RULES rules through
POST /v1/rules/batch: runtime rt-0 has ten, one of them for host api.openai.com, path /v1/*,
header Authorization, value `Bearer ${credential}`; the rest go to runtimes rt-1..rt-(RUNTIMES-1)
in runtime order (so a batch touches a few runtimes: the load is setup, not measured). Then a
pool of max(1,000, WRITES) extra rules to delete from. A 2 s grpc_load warms up (and fills the
secret cache).

Measured, in --rounds rounds, each round running, per binary:

  idle    examples/grpc_load, --concurrency (16) streams on one HTTP/2 connection, --seconds:
          POST http://api.openai.com/v1/chat/completions as rt-0 (every decision injects).
  churn   the same, while examples/admin_churn (--churn-writer) changes rules through the admin
          API at --writes-per-second, paced (write n is due at start + n / rate), at most
          --writers (16) in flight: even writes create a rule (/v1/* for a host of their own, in
          rt-1..: never rt-0), odd writes delete the oldest rule of the pool, which creates
          refill, so the rule count stays steady. Reported: the writes completed per second
          (achieved rate), their p50/p99, errors. The writer is a Rust program, not Python
          threads: 16 Python threads spent ~360 µs of CPU per write (0.18 cores at 500/s, at
          normal priority), a load of the benchmark's own on a 2-core machine that a platform's
          writers, elsewhere, do not put on the gateway host.

Printed: idle and churn throughput, p50 and p99 (medians over the rounds), the ratio churn p99 /
idle p99 (and p50, throughput), the writes' figures, where the CPU went (cores busy on average
in each phase: runta from /proc, grpc_load and the churn writer from their rusage; runta's CPU
per decision when idle, and per write: its CPU during churn less the decisions it served at the
idle cost per decision), and a sanity check: injections counted by runta's metrics per answered
request (should be 1.00). With --baseline, the two binaries' servers
run at the same time, the one not measured frozen (SIGSTOP), rounds interleaved (new idle, new
churn, baseline idle, baseline churn, ...), with a column new / baseline.

Nothing is pinned; the client, the load generator and the server share the machine's cores (2 on
the reference machine), so the writes also compete with the decisions for CPU, as they would on
a small gateway host.

usage: python3 scripts/bench_churn.py [--binary PATH] [--baseline PATH] [--rules N]
           [--runtimes N] [--seconds S] [--concurrency N] [--writes-per-second N]
           [--writers N] [--rounds N] [--grpc-load PATH] [--churn-writer PATH] [--json FILE]
"""
import argparse
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_changes import (  # noqa: E402
    DEFAULT_BINARY, MAX_BATCH, ROOT, Api, Server, Switcher, count_arg,
    install_sigterm_handler, latency_summary, log, median, metric_sum, print_table,
)

DEFAULT_GRPC_LOAD = os.path.join(ROOT, "target", "release", "examples", "grpc_load")
DEFAULT_CHURN_WRITER = os.path.join(ROOT, "target", "release", "examples", "admin_churn")
SECRET_NAME = "openai-api-key"
SECRET_VALUE = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz"
TEMPLATE = "Bearer ${credential}"
HOST, PATH = "api.openai.com", "/v1/chat/completions"


def process_cpu_s(pid):
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used during a phase by runta and by grpc_load (a child that has exited by the
    end, the only one reaped meanwhile)."""

    def __init__(self, server_pid):
        self.pid = server_pid
        self.runta = process_cpu_s(self.pid)
        self.children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.wall = time.perf_counter()

    def done(self):
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - self.wall
        share = lambda seconds: round(seconds / wall, 3)  # cores busy on average
        return {
            "runta": share(process_cpu_s(self.pid) - self.runta),
            "grpc_load": share(children.ru_utime + children.ru_stime
                               - self.children.ru_utime - self.children.ru_stime),
            "writers": 0.0,  # the churn writer's, filled in by the churn phase
        }


def rule(runtime, host, path):
    return {"runtime": runtime, "host": host, "path": path, "credential": SECRET_NAME,
            "inject": {"header": "Authorization", "value": TEMPLATE}}


def load_rules(count, runtimes):
    """Batches of the rule set: rt-0's ten rules first, the rest in runtime order."""
    others = max(1, runtimes - 1)
    batch = []
    for i in range(count):
        if i < 10:
            runtime = "rt-0"
        else:
            runtime = f"rt-{1 + (i - 10) * others // max(1, count - 10)}"
        if i == 0:
            host = HOST
        elif i % 3 == 0:
            host = f"*.svc{i}.example.com"
        else:
            host = f"api{i}.example.com"
        batch.append(rule(runtime, host, "/v1/*" if i % 2 == 0 else f"/p{i}/*"))
        if len(batch) == MAX_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


class Churn:
    """Paced rule creates and deletes by examples/admin_churn (a process of its own, so that the
    writes' client costs what a real one does, not a Python interpreter's share of the cores)."""

    def __init__(self, args, port, key, pool, tag, work):
        self.args, self.port, self.key, self.pool, self.tag = args, port, key, pool, tag
        self.pool_file = os.path.join(work, f"churn-pool-{tag}")

    def start(self):
        with open(self.pool_file, "w") as f:
            f.writelines(f"{rule_id}\n" for rule_id in self.pool)
        args = self.args
        self.proc = subprocess.Popen(
            [args.churn_writer, f"127.0.0.1:{self.port}", self.key, str(args.writes_per_second),
             str(args.writers), str(args.runtimes), self.tag, self.pool_file],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return self

    def stop(self):
        """Ends the writes (the writer finishes those in flight) and returns their figures."""
        self.proc.stdin.close()
        out, err = self.proc.stdout.read(), self.proc.stderr.read()
        # wait4, not wait: the writer's own CPU time, apart from grpc_load's.
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0:
            raise SystemExit(f"admin_churn failed ({self.proc.returncode}): {err.decode()[-2000:]}")
        result = json.loads(out)
        if result["first_error"]:
            log(f"  churn: {result['errors']} failed writes, first: {result['first_error']}")
        self.pool.clear()
        self.pool.extend(result["pool"])
        everything = result["create"] + result["delete"]
        elapsed = result["seconds"]
        return dict(latency_summary(everything), target_per_s=self.args.writes_per_second,
                    per_s=round(len(everything) / elapsed, 1), seconds=round(elapsed, 2),
                    creates=len(result["create"]), deletes=len(result["delete"]),
                    errors=result["errors"],
                    cpu=round((usage.ru_utime + usage.ru_stime) / elapsed, 3))


class Target:
    """One binary's server, its credentials and its churn pool."""

    def __init__(self, label, binary, work, args):
        self.label, self.binary, self.args = label, binary, args
        self.server = Server(binary, f"runta-{label}", work,
                             env={"RUNTA_GRPC__IDENTITY_GATEWAYS": '["generated"]'})
        self.pool = collections.deque()
        self.rounds = {"idle": [], "churn": []}

    def freeze(self):
        self.server.freeze()

    def thaw(self):
        self.server.thaw()

    def setup(self):
        args = self.args
        log(f"{self.label}: starting {self.binary}")
        self.server.start(args.ready_timeout)
        data = self.server.data_dir
        with open(os.path.join(data, "api-key")) as f:
            self.key = f.read().strip()
        with open(os.path.join(data, "gateway-token")) as f:
            self.gateway_token = f.read().strip()
        self.api = Api(self.server.admin_port, self.key)
        self.api.call("POST", "/v1/secrets", {"name": SECRET_NAME, "value": SECRET_VALUE,
                                              "cache_ttl_secs": 86400})
        started = time.perf_counter()
        loaded = 0
        for batch in load_rules(args.rules, args.runtimes):
            self.api.call("POST", "/v1/rules/batch", {"rules": batch})
            loaded += len(batch)
            if loaded % max(MAX_BATCH, args.rules // 10 // MAX_BATCH * MAX_BATCH) == 0:
                log(f"  {self.label}: {loaded:,} rules, {time.perf_counter() - started:.1f} s")
        self.load_s = time.perf_counter() - started
        others = max(1, args.runtimes - 1)
        seed = max(1000, int(args.writes_per_second))
        for first in range(0, seed, MAX_BATCH):
            batch = [rule(f"rt-{1 + i % others}", f"pool{i}.example.com", "/v1/*")
                     for i in range(first, min(seed, first + MAX_BATCH))]
            answer = self.api.call("POST", "/v1/rules/batch", {"rules": batch})
            self.pool.extend(r["id"] for r in answer["data"])
        self.rules_loaded = self.api.metric("runta_rules_loaded")
        log(f"  {self.label}: {args.rules:,} rules loaded in {self.load_s:.1f} s, "
            f"{len(self.pool):,} more in the churn pool; runta_rules_loaded {self.rules_loaded:,.0f}")
        warm = self.grpc_load(2)
        if warm["errors"] or not warm["requests"]:
            raise SystemExit(f"{self.label}: grpc_load failed while warming up: {warm}\n"
                             f"{self.server.log_tail()}")
        if warm["injected_per_request"] < 0.99:
            raise SystemExit(f"{self.label}: the warm-up requests were not injected: {warm}")

    def grpc_load(self, seconds):
        before = self.api.metrics_text()
        run = subprocess.run(
            [self.args.grpc_load, f"127.0.0.1:{self.server.grpc_port}", str(self.args.concurrency),
             str(seconds), self.gateway_token, "default", "rt-0", HOST, PATH],
            capture_output=True, text=True, timeout=seconds + 120)
        if run.returncode != 0:
            raise SystemExit(f"grpc_load failed ({run.returncode}): {run.stderr[-2000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        after = self.api.metrics_text()
        injected = (metric_sum(after, "runta_injections_total", {"kind": "header"})
                    - metric_sum(before, "runta_injections_total", {"kind": "header"}))
        requests = result["requests"]
        result["injected_per_request"] = round(injected / requests, 3) if requests else 0
        if result["errors"]:
            log(f"  {self.label}: grpc_load errors: {run.stderr.strip()[-500:]}")
        return result

    def idle(self, round_):
        cpu = CpuMeter(self.server.proc.pid)
        result = self.grpc_load(self.args.seconds)
        result["cpu"] = cpu.done()
        self.rounds["idle"].append(result)
        log(f"round {round_} {self.label:8} idle  {result}")

    def churn(self, round_):
        before = self.api.metric("runta_rules_loaded")
        cpu = CpuMeter(self.server.proc.pid)
        churn = Churn(self.args, self.server.admin_port, self.key, self.pool, f"r{round_}",
                      self.server.data_dir).start()
        try:
            result = self.grpc_load(self.args.seconds)
            result["cpu"] = cpu.done()
        finally:
            writes = churn.stop()
        result["cpu"]["writers"] = writes.pop("cpu")
        result["writes"] = writes
        result["rules_loaded_before"] = before
        result["rules_loaded_after"] = self.api.metric("runta_rules_loaded")
        self.rounds["churn"].append(result)
        log(f"round {round_} {self.label:8} churn {result}")

    def summary(self):
        def med(kind, key, sub=None):
            values = [(r[sub] if sub else r)[key] for r in self.rounds[kind]]
            return median(values)
        out = {"load_s": round(self.load_s, 2), "rules_loaded": self.rules_loaded}
        for kind in ("idle", "churn"):
            out[kind] = {key: med(kind, key) for key in
                         ("rps", "p50_us", "p99_us", "errors", "injected_per_request")}
        out["churn"]["writes"] = {key: med("churn", key, "writes") for key in
                                  ("per_s", "p50_ms", "p99_ms", "errors")}
        out["churn"]["writes"]["target_per_s"] = self.args.writes_per_second
        for kind in ("idle", "churn"):
            out[kind]["cpu"] = {key: med(kind, key, "cpu") for key in
                                ("runta", "grpc_load", "writers")}
        # runta's CPU per decision when idle, and what each write added on top of the decisions
        # it served meanwhile (CPU-seconds per second / per-second rates).
        idle_cpu, churn_cpu = out["idle"]["cpu"], out["churn"]["cpu"]
        per_decision = idle_cpu["runta"] / out["idle"]["rps"] if out["idle"]["rps"] else 0
        writes_per_s = out["churn"]["writes"]["per_s"]
        out["runta_cpu_us"] = {
            "per_decision": round(per_decision * 1e6, 1),
            "per_write": round((churn_cpu["runta"] - per_decision * out["churn"]["rps"])
                               / writes_per_s * 1e6, 1) if writes_per_s else None,
            "writers_per_write": round(churn_cpu["writers"] / writes_per_s * 1e6, 1)
            if writes_per_s else None,
        }
        idle, churn = out["idle"], out["churn"]
        ratio = lambda key: round(churn[key] / idle[key], 3) if idle[key] else None
        out["ratios"] = {"p99_churn_over_idle": ratio("p99_us"),
                         "p50_churn_over_idle": ratio("p50_us"),
                         "rps_churn_over_idle": ratio("rps")}
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", default=DEFAULT_BINARY, help="the runta binary measured")
    parser.add_argument("--baseline", help="an older runta binary, measured side by side")
    parser.add_argument("--grpc-load", default=DEFAULT_GRPC_LOAD, help="examples/grpc_load")
    parser.add_argument("--churn-writer", default=DEFAULT_CHURN_WRITER,
                        help="examples/admin_churn")
    parser.add_argument("--rules", type=count_arg, default=100_000)
    parser.add_argument("--runtimes", type=count_arg, default=1_000)
    parser.add_argument("--seconds", type=int, default=10, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="grpc_load's concurrent streams")
    parser.add_argument("--writes-per-second", type=float, default=500)
    parser.add_argument("--writers", type=int, default=16,
                        help="the most writes in flight at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ready-timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if min(args.rules, args.runtimes, args.writers, args.rounds, args.seconds) < 1 \
            or args.writes_per_second <= 0:
        parser.error("--rules, --runtimes, --seconds, --writes-per-second, --writers and "
                     "--rounds must be positive")
    args.grpc_load = os.path.abspath(args.grpc_load)
    args.churn_writer = os.path.abspath(args.churn_writer)
    binaries = [("new", os.path.abspath(args.binary))]
    if args.baseline:
        binaries.append(("baseline", os.path.abspath(args.baseline)))
    for path in [b for _, b in binaries] + [args.grpc_load, args.churn_writer]:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"not an executable: {path}")
    install_sigterm_handler()
    work = tempfile.mkdtemp(prefix="runta-bench-churn-")
    targets = [Target(label, binary, work, args) for label, binary in binaries]
    switch = Switcher(targets)
    results = {"args": vars(args), "cpus": os.cpu_count(), "binaries": dict(binaries),
               "rounds": {t.label: t.rounds for t in targets}}  # filled as the rounds finish
    try:
        for target in targets:
            with switch.active(target):
                target.setup()
        for round_ in range(1, args.rounds + 1):
            for target in targets:
                with switch.active(target):
                    target.idle(round_)
                    target.churn(round_)
        results["results"] = {t.label: t.summary() for t in targets}
    except RuntimeError as err:  # a server did not start; the message has its log
        raise SystemExit(f"error: {err}")
    finally:
        for target in targets:
            target.server.stop()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
                f.write("\n")
    labels = [t.label for t in targets]
    r = results["results"]
    v = lambda get: {label: get(r[label]) for label in labels}
    rows = [
        ("rules loaded (runta_rules_loaded)", 0, v(lambda s: s["rules_loaded"])),
        ("idle: decisions/s", 0, v(lambda s: s["idle"]["rps"])),
        ("idle: p50 (µs)", 0, v(lambda s: s["idle"]["p50_us"])),
        ("idle: p99 (µs)", 0, v(lambda s: s["idle"]["p99_us"])),
        ("churn: decisions/s", 0, v(lambda s: s["churn"]["rps"])),
        ("churn: p50 (µs)", 0, v(lambda s: s["churn"]["p50_us"])),
        ("churn: p99 (µs)", 0, v(lambda s: s["churn"]["p99_us"])),
        ("churn p99 / idle p99", 2, v(lambda s: s["ratios"]["p99_churn_over_idle"])),
        ("churn p50 / idle p50", 2, v(lambda s: s["ratios"]["p50_churn_over_idle"])),
        ("churn decisions/s / idle decisions/s", 2, v(lambda s: s["ratios"]["rps_churn_over_idle"])),
        (f"writes/s achieved (target {args.writes_per_second:g})", 1,
         v(lambda s: s["churn"]["writes"]["per_s"])),
        ("write p50 (ms)", 2, v(lambda s: s["churn"]["writes"]["p50_ms"])),
        ("write p99 (ms)", 2, v(lambda s: s["churn"]["writes"]["p99_ms"])),
        ("write errors (median of rounds)", 0, v(lambda s: s["churn"]["writes"]["errors"])),
        ("cores busy idle: runta/grpc_load", 2,
         v(lambda s: f"{s['idle']['cpu']['runta']:.2f}/{s['idle']['cpu']['grpc_load']:.2f}")),
        ("cores busy churn: runta/grpc_load/writer", 2,
         v(lambda s: f"{s['churn']['cpu']['runta']:.2f}/{s['churn']['cpu']['grpc_load']:.2f}"
                     f"/{s['churn']['cpu']['writers']:.2f}")),
        ("runta CPU per decision, idle (µs)", 1, v(lambda s: s["runta_cpu_us"]["per_decision"])),
        ("runta CPU per write, above decisions (µs)", 1,
         v(lambda s: s["runta_cpu_us"]["per_write"])),
        ("writer client CPU per write (µs)", 1, v(lambda s: s["runta_cpu_us"]["writers_per_write"])),
        ("decision errors idle / churn (median)", 0,
         v(lambda s: f"{s['idle']['errors']:.0f} / {s['churn']['errors']:.0f}")),
        ("injections per answered request (idle)", 2, v(lambda s: s["idle"]["injected_per_request"])),
        ("injections per answered request (churn)", 2, v(lambda s: s["churn"]["injected_per_request"])),
    ]
    print_table(f"ext_proc while rules churn: {args.rules:,} rules, {args.concurrency} streams, "
                f"{args.rounds} rounds x {args.seconds} s, medians", rows, labels)
    for label in labels:
        achieved = r[label]["churn"]["writes"]["per_s"]
        if achieved < 0.9 * args.writes_per_second:
            print(f"note: {label} completed {achieved:g} writes/s of the {args.writes_per_second:g} "
                  f"asked for: with {args.writers} writers in flight, the writes could not keep up "
                  f"(their latency x rate exceeds the writers); the churn was lighter than asked")


if __name__ == "__main__":
    main()
