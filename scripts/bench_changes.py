#!/usr/bin/env python3
"""What a change costs through the admin API at scale (release build, SQLite, one replica).

Loads RULES rules through POST /v1/rules/batch (1,000 per batch, spread over RUNTIMES runtimes),
timing the load; then times COUNT single rule creates (POST /v1/runtimes/{rt}/rules, each a new
rule of one runtime) and COUNT runtime token creates, one after another, each answered only
after the change is applied to the in-memory snapshot. Prints p50/p99/max.

usage: python3 scripts/bench_changes.py [--rules N] [--runtimes N] [--count N]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTA = os.path.join(ROOT, "target", "release", "runta")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, key, method, path, body=None):
    request = urllib.request.Request(
        base + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def summary(name, seconds):
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{name:28} p50 {statistics.median(ms):8.2f} ms   p99 {p99:8.2f} ms   max {ms[-1]:8.2f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=100_000)
    parser.add_argument("--runtimes", type=int, default=1_000)
    parser.add_argument("--count", type=int, default=50)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="runta-bench-changes-")
    admin = free_port()
    server = subprocess.Popen(
        [RUNTA, "serve", "--data-dir", work, "--admin-listen", f"127.0.0.1:{admin}",
         "--grpc-listen", f"127.0.0.1:{free_port()}"],
        env=dict(os.environ, RUNTA_LOG__LEVEL="warn"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{admin}"
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        key = open(os.path.join(work, "api-key")).read().strip()
        call(base, key, "POST", "/v1/secrets", {"name": "k", "value": "v"})
        started = time.time()
        for batch in range(0, args.rules, 1000):
            rules = [{"runtime": f"rt-{i % args.runtimes}", "host": f"h{i}.example.com",
                      "credential": "k", "inject": {"header": "x-k"}}
                     for i in range(batch, min(args.rules, batch + 1000))]
            call(base, key, "POST", "/v1/rules/batch", {"rules": rules})
        print(f"{args.rules} rules over {args.runtimes} runtimes through the batch API: "
              f"{time.time() - started:.1f} s")
        creates, tokens = [], []
        for i in range(args.count):
            t = time.time()
            call(base, key, "POST", f"/v1/runtimes/rt-{i}/rules",
                 {"host": f"new{i}.example.com", "injection": {"credential": "k", "header": "x-n"}})
            creates.append(time.time() - t)
            t = time.time()
            call(base, key, "POST", f"/v1/runtimes/rt-{i}/tokens")
            tokens.append(time.time() - t)
        summary("single rule create", creates)
        summary("runtime token create", tokens)
    finally:
        server.terminate()
        server.wait(timeout=10)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
