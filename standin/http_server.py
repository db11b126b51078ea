"""The socket side: a threaded HTTP/1.1 server on loopback.

Its handler reads each request in full (so kept-alive connections stay in
step), asks a responder what to answer, and writes the answer or resets the
connection. What the answers are is decided elsewhere (see ``routes``).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import sys
import traceback
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .protocol import MAX_BODY_BYTES, Answer

#: Answers one request: ``(method, raw path, headers, body, oversize) -> Answer``.
Responder = Callable[[str, str, Message, bytes, bool], Answer]

#: Oversized bodies up to this many bytes are read and thrown away so the
#: connection survives; beyond it the connection is closed after the 413.
_DISCARD_MAX_BYTES = 16 << 20
#: Sent when the responder itself fails: a stand-in bug must still answer something.
_STANDIN_ERROR = Answer(500, b'{"code": 500, "msg": "stand-in error", "data": null}')


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, lets the server's responder answer it, writes the answer."""

    # HTTP/1.1 keeps connections alive like the real API behind its proxy.
    protocol_version = "HTTP/1.1"
    server_version = "KieStandin/1.0"
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 30
    # Headers and body leave in one segment (buffered writer, flushed after
    # each request) without Nagle: otherwise delayed ACKs add ~40 ms a call.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines: tests and benchmarks want quiet."""

    def do_GET(self) -> None:  # the names http.server dispatches to
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        """Read the body (always, so a kept-alive connection stays in step), answer."""
        server = self.server
        assert isinstance(server, StandinHTTPServer)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, "bad Content-Length")
            return
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            # Kie's clients send Content-Length; rather than decode chunks,
            # drop the connection after answering so the stream stays sane.
            self.close_connection = True
            length = 0
        oversize = length > MAX_BODY_BYTES
        body = b""
        if oversize:
            self._discard(length)
        elif length > 0:
            body = self.rfile.read(length)
        try:
            answer = server.respond(method, self.path, self.headers, body, oversize)
        except Exception:  # a stand-in bug must still answer something
            traceback.print_exc()
            answer = _STANDIN_ERROR
        self._write(answer)

    def _discard(self, length: int) -> None:
        """Skip an oversized body of ``length`` bytes so the client gets its 413, not a reset."""
        if length > _DISCARD_MAX_BYTES:
            # Too much to read; the unread rest would be taken for the next
            # request, so this connection ends with the answer.
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    def _write(self, answer: Answer) -> None:
        """Send ``answer``, or reset the connection when it says so."""
        if answer.reset:
            self.close_connection = True
            # Linger 0: close() sends RST instead of FIN, like a crashed proxy.
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.connection.close()
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)


class StandinHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server bound to loopback, quiet about clients hanging up.

    Binds on construction; serve with ``serve_forever()``, end with
    ``shutdown()`` and ``server_close()``.
    """

    daemon_threads = True  # do not block stop() on idle keep-alive connections
    # Benchmarks open many connections at once; the default backlog of 5
    # would make the kernel drop SYNs and add whole seconds of retry.
    request_queue_size = 128

    def __init__(self, host: str, port: int, respond: Responder) -> None:
        """Bind ``host:port`` (0 = any free port); ``respond`` answers every request.

        ``"localhost"`` binds 127.0.0.1; an address with ``:`` binds IPv6.

        Raises:
            OSError: when the address cannot be bound.
        """
        self.respond = respond
        bind_host = "127.0.0.1" if host == "localhost" else host
        if ":" in bind_host:
            self.address_family = socket.AF_INET6
        super().__init__((bind_host, port), _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's name lookup."""
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup
        # that could leave the machine; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report a failed request, unless the client merely went away."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away; nothing to report
        super().handle_error(request, client_address)
