"""A real ``runta serve`` for the tests: started on free ports in a temporary data directory,
stopped (and restartable on the same port, with the same data) by the test that owns it.

The binary is ``$RUNTA_BIN``, else the repository's ``target/debug/runta``. Under ``CI=true`` a
missing binary fails the suite; elsewhere the tests that need it are skipped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]
LISTENING = re.compile(r"admin API listening on http://127\.0\.0\.1:(\d+)")


def runta_bin() -> Path:
    path = Path(os.environ.get("RUNTA_BIN") or REPO / "target" / "debug" / "runta")
    if not os.access(path, os.X_OK):
        message = f"no runta binary at {path}: build it (cargo build) or set RUNTA_BIN"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class RuntaServer:
    """One ``runta serve`` process and its data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.binary = runta_bin()
        self.port = 0
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return (self.data_dir / "api-key").read_text().strip()

    @property
    def operator_token(self) -> str:
        return (self.data_dir / "operator-token").read_text().strip()

    def start(self, port: Optional[int] = None) -> RuntaServer:
        """Starts the server, on ``port`` if given (a restart), else on a free port."""
        listen = f"127.0.0.1:{port if port is not None else 0}"
        log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--admin-listen",
                listen,
                "--grpc-listen",
                "127.0.0.1:0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            found = LISTENING.search(text)
            if found:
                self.port = int(found.group(1))
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"runta serve did not start; its log:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def rest(self, method: str, path: str, key: str, body: Any = None) -> Tuple[int, Any]:
        """A plain HTTP call, independent of the SDK: how the tests check what the SDK did."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, (json.loads(raw) if raw else None)
