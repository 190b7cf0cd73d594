"""A small threaded HTTP(S) server on 127.0.0.1 with a free port, run in a background thread."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes.tls import TestPki


class StateServer(ThreadingHTTPServer):
    """A threaded server carrying `state`: whatever its handlers share with the test."""

    state: dict[str, Any]


class JsonHandler(BaseHTTPRequestHandler):
    """Base handler with helpers to read a (possibly gzip) body and answer JSON. Quiet by default."""

    protocol_version = "HTTP/1.1"

    @property
    def state(self) -> dict[str, Any]:
        """The state the server shares with the test."""
        assert isinstance(self.server, StateServer)
        return self.server.state

    def log_message(self, format: str, *args: Any) -> None:
        return

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            import gzip

            body = gzip.decompress(body)
        return body

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data:
            self.wfile.write(data)


class FakeServer:
    """A running server: `url` is its base address, `state` whatever the handler shares with tests."""

    def __init__(self, server: StateServer, scheme: str) -> None:
        self.server = server
        self.state = server.state
        port = server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{port}"  # serve() binds loopback only


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler], pki: TestPki | None = None, **state: Any) -> Iterator[FakeServer]:
    """Run handler on 127.0.0.1 (HTTPS when pki is given); handler instances see it as `self.state`."""
    server = StateServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.state = state
    scheme = "http"
    if pki is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield FakeServer(server, scheme)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
