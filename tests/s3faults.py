"""An S3 endpoint that fails the way S3 does under load: a reverse proxy in front of the tests' moto server.

    with FaultyS3(upstream="http://127.0.0.1:5000", rate=0.2, seed=1) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        ...                       # every request has a 20% chance of one of FAULTS
        proxy.counts              # Counter: fault name -> requests it failed
        with proxy.down():        # every request fails (connection closed) until the block ends
            ...
        proxy.fail_key("photos/a.jpg", count=3)     # the next 3 requests for that key fail
        proxy.drop_next(1, "PUT")  # the next PUT is applied, and its reply dropped
        proxy.outage(after=40, seconds=3)           # from the 40th request on, 3 s of closed connections

Faults (each drawn with equal chance once a request is chosen to fail, from a seeded generator):
  slowdown     503 SlowDown, not forwarded (S3's answer to a prefix read too fast)
  internal     500 InternalError, not forwarded
  cut          forwarded; the reply's headers and half of its body are sent, then the connection is closed
  drop_reply   forwarded (the store applied it), then the connection is closed before any reply: uploads,
               markers and conditional lease writes that succeeded although the client never heard
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
import urllib.parse
from collections import Counter
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("slowdown", "internal", "cut", "drop_reply")
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}


class FaultyS3:
    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0, faults: tuple[str, ...] = FAULTS):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.rate, self.faults = rate, faults
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.requests = 0
        self.is_down = False
        self.failing: dict[str, int] = {}  # key -> requests for it still to fail
        self.drops: dict[str, int] = {}  # method -> replies still to drop
        self.outage_at: tuple[int, float] | None = None  # (request number, seconds)
        self.down_until = 0.0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultyS3:
        threading.Thread(target=self.server.serve_forever, name="faulty-s3", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set_rate(self, rate: float) -> None:
        with self.lock:
            self.rate = rate

    @contextmanager
    def down(self):
        """Every request fails (the connection is closed at once) inside the block."""
        self.is_down = True
        try:
            yield
        finally:
            self.is_down = False

    def fail_key(self, key: str, count: int) -> None:
        """The next `count` requests whose path ends with `key` fail with 503 SlowDown."""
        with self.lock:
            self.failing[key] = count

    def drop_next(self, count: int, method: str = "PUT") -> None:
        """The next `count` requests with `method` are forwarded (applied), then their replies dropped."""
        with self.lock:
            self.drops[method] = count

    def outage(self, after: int, seconds: float) -> None:
        """From `after` requests from now on, every request fails (connection closed) for `seconds`."""
        with self.lock:
            self.outage_at = (self.requests + after, seconds)

    def choose(self, method: str, path: str) -> str | None:
        """The fault for one request, or None to forward it untouched."""
        with self.lock:
            self.requests += 1
            now = time.monotonic()
            if self.outage_at is not None and self.requests >= self.outage_at[0]:
                self.down_until, self.outage_at = now + self.outage_at[1], None
            if self.is_down or now < self.down_until:
                self.counts["down"] += 1
                return "down"
            if self.drops.get(method, 0) > 0:
                self.drops[method] -= 1
                self.counts["drop_reply"] += 1
                return "drop_reply"
            for key, left in self.failing.items():
                if left > 0 and urllib.parse.unquote(path.split("?", 1)[0]).endswith(key):
                    self.failing[key] -= 1
                    self.counts["key"] += 1
                    return "slowdown"
            if self.random.random() >= self.rate:
                return None
            fault = self.random.choice(self.faults)
            self.counts[fault] += 1
            return fault


def _handler(proxy: FaultyS3):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def setup(self) -> None:  # headers and body go out in separate writes: no Nagle delay between them
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _relay(self) -> None:
            body = self._body()
            fault = proxy.choose(self.command, self.path)
            if fault == "down":
                self._close()
                return
            if fault in _ERRORS:
                self._error(*_ERRORS[fault])
                return
            status, reason, headers, data = self._forward(body)
            if fault == "drop_reply":
                self._close()
                return
            self.send_response(status, reason)
            head = self.command == "HEAD"
            for name, value in headers:  # a HEAD's Content-Length is the object's: kept as is
                if name.lower() not in _HOP_BY_HOP and (name.lower() != "content-length" or head):
                    self.send_header(name, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            if fault == "cut" and self.command != "HEAD":
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._close()
                return
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes):
            connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers.pop("Expect", None)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or body:
                headers["Content-Length"] = str(len(body))
            try:
                connection.connect()
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection.request(self.command, self.path, body=body or None, headers=headers)
                reply = connection.getresponse()
                data = reply.read()
                return reply.status, reply.reason, reply.getheaders(), data
            finally:
                connection.close()

        def _error(self, status: int, code: str, message: str) -> None:
            data = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<RequestId>faulty-s3</RequestId></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _close(self) -> None:
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler
