"""Test doubles that stand in front of or beside real processes: stub upstreams and a fault-injecting proxy."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

REPORT_ENV = "CANARY_TEST_REPORT"


def nginx_binary() -> str:
    """The nginx executable, or skip (Debian: apt-get install nginx)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


def record_report(name: str, **values: Any) -> None:
    """Append measurements to $CANARY_TEST_REPORT (JSON Lines) when set, for the benchmark write-up."""
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"test": name, "at": time.time(), **values}) + "\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StubUpstream:
    """A tiny HTTP server answering like a serving process of one track (for router-only tests)."""

    def __init__(self, track: str) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps(
                    {"track": track, "model_version": "1", "request_id": self.headers.get("X-Request-ID")}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                stub.count += 1

            do_GET = do_POST = _answer

        self.count = 0
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FaultProxy:
    """An HTTP proxy in front of a real serving process that can start failing on /predict.

    Modes: ``pass`` (forward everything), ``error`` (answer /predict with 503
    without forwarding), ``slow`` (sleep ``delay`` seconds, then forward).
    Everything else (/health, /metrics, /feedback) is always forwarded.
    """

    def __init__(self) -> None:
        self.target_port: int | None = None
        self.mode = "pass"
        self.delay = 1.0
        self.injected = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == "/predict" and proxy.mode == "error":
                    proxy.injected += 1
                    self._reply(503, b'{"error": "injected fault"}', {"Content-Type": "application/json"})
                    return
                if self.path == "/predict" and proxy.mode == "slow":
                    proxy.injected += 1
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                try:
                    response = httpx.request(
                        self.command,
                        f"http://127.0.0.1:{proxy.target_port}{self.path}",
                        content=body,
                        headers=headers,
                        timeout=30,
                    )
                except httpx.HTTPError:
                    self._reply(502, b'{"error": "upstream unreachable"}', {"Content-Type": "application/json"})
                    return
                self._reply(response.status_code, response.content, dict(response.headers))

            do_GET = do_POST = _handle

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def attach(self, target_port: int) -> int:
        """Forward to ``target_port`` from now on; return the proxy's own port."""
        self.target_port, self.mode, self.injected = target_port, "pass", 0
        return self.port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
