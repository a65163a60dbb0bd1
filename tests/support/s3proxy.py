"""A reverse proxy in front of an S3 server: it counts what crosses the wire and can
play a struggling store (tests/test_s3_backup.py, tests/test_progress.py)."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE")
# Hop-by-hop headers a proxy must not pass on; Expect is answered by the proxy
# itself (and is never signed by botocore).
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"})


Fault = Callable[[str, str], "tuple[int, str] | None"]
"""``fault(method, path)``: an S3 error (HTTP status, code) to answer instead of
forwarding the request, or None to forward it."""


class CountingProxy:
    """A reverse proxy on 127.0.0.1 that forwards to ``upstream`` and counts requests.

    Requests are classified as S3 bills them: GET with ``list-type`` or
    ``uploads`` in the query is a LIST, POST counts with PUT.  The Host header
    is passed on unchanged, so SigV4 signatures still verify upstream.  With
    ``fault``, a struggling store: the requests it picks get an S3 error reply
    (``503 SlowDown``) without reaching ``upstream``.
    """

    def __init__(self, upstream: str, fault: Fault | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.bytes_up = 0
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of each ranged GET
        self._lock = threading.Lock()
        target = urlsplit(upstream)
        host, port = target.hostname or "127.0.0.1", target.port or 80
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each small reply waits for a delayed ACK

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy._count(self.command, self.path, length)
                if self.command == "GET" and self.headers.get("Range"):
                    with proxy._lock:
                        proxy.ranges.append((self.path, self.headers["Range"]))
                refusal = fault(self.command, self.path) if fault is not None else None
                if refusal is not None:
                    self._refuse(*refusal)
                    return
                upstream_conn = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    upstream_conn.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in _HOP:
                            upstream_conn.putheader(name, value)
                    upstream_conn.endheaders(body)
                    reply = upstream_conn.getresponse()
                    data = reply.read()
                    self.send_response_only(reply.status, reply.reason)
                    for name, value in reply.getheaders():
                        if name.lower() not in _HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", reply.getheader("Content-Length", "0"))
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream_conn.close()

            def _refuse(self, status: int, code: str) -> None:
                data = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                self.send_response_only(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _count(self, method: str, path: str, length: int) -> None:
        query = urlsplit(path).query
        if method == "GET" and ("list-type" in query or "uploads" in query):
            kind = "LIST"
        elif method in ("GET", "HEAD", "DELETE"):
            kind = method
        else:
            kind = "PUT"
        with self._lock:
            self.counts[kind] += 1
            self.bytes_up += length

    def take(self) -> tuple[dict[str, int], int]:
        """The counts and bytes uploaded since the last call."""
        with self._lock:
            counts = {k: self.counts[k] for k in KINDS}
            up = self.bytes_up
            self.counts.clear()
            self.bytes_up = 0
        return counts, up

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
