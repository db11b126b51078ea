"""Loopback apps that receive outcome notices (or the stand-in's callbacks): a fast one
and one that answers slowly.

Both are real servers on a 127.x address, each request kept with its headers,
its body and when it started and ended (monotonic seconds).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.services import serve_in_thread, stop_server

#: What the slow app answers, one byte every `SlowApp.interval_s`.
SLOW_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Received:
    """One request an app received."""

    headers: dict[str, str]  # names in lower case
    body: bytes
    started: float
    ended: float | None = None  # when the client closed (slow app) or it was answered
    answered_bytes: int = 0  # bytes of the answer sent before the client closed (slow app)

    @property
    def notice_id(self) -> str:
        return self.headers.get("x-covers-notice-id", "")

    def json(self) -> Any:
        """The body, read as JSON."""
        return json.loads(self.body)


@dataclass
class _Log:
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class FastApp:
    """An app that answers every notice at once (204, or the next of `statuses`)."""

    def __init__(self, host: str = "127.0.0.1", statuses: list[int] | None = None) -> None:
        self.log = _Log()
        self.statuses = list(statuses or [])
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with app.log.lock:
                    app.log.connections += 1

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                started = time.monotonic()
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with app.log.lock:
                    status = app.statuses.pop(0) if app.statuses else 204
                    app.log.received.append(Received(
                        {k.lower(): v for k, v in self.headers.items()}, body, started,
                        time.monotonic()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        serve_in_thread(self.server)
        self.url = f"http://{host}:{self.server.server_address[1]}/notices"

    @property
    def received(self) -> list[Received]:
        with self.log.lock:
            return list(self.log.received)

    def stop(self) -> None:
        stop_server(self.server)


class SlowApp:
    """An app that reads each notice whole, then answers one byte every `interval_s`.

    A request's `Received.ended` is when the client closed the connection (or the
    whole answer was sent).
    """

    def __init__(self, host: str = "127.0.0.1", interval_s: float = 1.0) -> None:
        self.log = _Log()
        self.interval_s = interval_s
        self._listener = socket.create_server((host, 0))
        self._stopped = threading.Event()
        self.url = f"http://{host}:{self._listener.getsockname()[1]}/notices"
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def received(self) -> list[Received]:
        with self.log.lock:
            return list(self.log.received)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self.log.lock:
                self.log.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            started = time.monotonic()
            head, _, body = data.partition(b"\r\n\r\n")
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            while len(body) < int(headers.get("content-length", "0")):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            request = Received(headers, body, started)
            with self.log.lock:
                self.log.received.append(request)
            for i in range(len(SLOW_ANSWER)):
                # Wait one interval, watching for the client closing the connection.
                try:
                    readable, _, _ = select.select([conn], [], [], self.interval_s)
                    if readable and not conn.recv(1):
                        break
                    conn.sendall(SLOW_ANSWER[i:i + 1])
                    request.answered_bytes += 1
                except OSError:
                    break
            request.ended = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
