"""POSTs to the app's callback URLs over kept-alive connections (`post`).

Outcome notices go out once per cover, so their cost per request matters: the
standard library's `http.client` with one kept-alive connection per origin and
thread costs a fraction of a `requests` call (no session merging, no proxy
lookups from the environment on every call, no adapters). Notices are sent
straight to the app, never through an HTTP proxy.

Two guarantees hold for every `post`:

- **A total-time cap.** ``timeout_s`` bounds the whole request: connecting, the
  TLS handshake, sending, and reading the whole answer. Every send and receive
  on the connection waits at most until the request's deadline (the socket's
  timeout is set to what is left before each call), so an app that trickles its
  answer (one byte a second) is cut at the cap with `TimeoutError`, and no byte
  of the request leaves after the deadline. The one step the cap cannot
  interrupt is the name lookup (the system resolver's own timeouts bound it); a
  lookup that ends past the deadline sends nothing.
- **The outbound address policy.** Connections are opened only by
  `kie_covers.runtime.outbound.connect`, to an address
  `kie_covers.core.addresses` allows (loopback and private ones only with
  ``allow_private``, i.e. COVERS_ALLOW_PRIVATE_TARGETS=1); a refused target
  raises `kie_covers.core.addresses.TargetRefused` (a name that does not
  resolve is a `socket.gaierror`, an OSError: the DNS may answer later). A
  kept-alive connection is reused only for the same origin and the same
  ``allow_private``. https connections are wrapped in TLS with the system's
  trust store and the URL's host as ``server_hostname``.
"""

from __future__ import annotations

import functools
import http.client
import os
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from kie_covers.core.addresses import TargetRefused
from kie_covers.runtime import outbound

#: Bytes of an app's answer that are read; a longer answer closes the connection.
MAX_ANSWER_BYTES = 65536

_local = threading.local()
#: Errors that mean a kept-alive connection was closed by the app while idle.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

#: (scheme, host, port) of a URL.
Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of an http(s) URL; the port defaults to 80 or 443.

    Raises:
        ValueError: `url` is not an http(s) URL with a host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _arm(sock: socket.socket, deadline: float) -> None:
    """Let the next socket call wait only until `deadline` (monotonic seconds)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's time cap is spent")
    sock.settimeout(left)


class _CappedSocket(socket.socket):
    """A TCP socket whose every send and receive ends by `deadline` (monotonic s).

    A socket timeout bounds a whole `sendall` (not each chunk), since Python 3.5;
    `ssl.SSLSocket.sendall` loops over `send`, so both are capped there too.
    """

    deadline = 0.0

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        _arm(self, self.deadline)
        return super().recv(*args, **kwargs)

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        _arm(self, self.deadline)
        return super().recv_into(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> int:
        _arm(self, self.deadline)
        return super().send(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        _arm(self, self.deadline)
        super().sendall(*args, **kwargs)


class _CappedTLSSocket(_CappedSocket, ssl.SSLSocket):
    """A TLS socket capped by `deadline` (see `_CappedSocket`)."""


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context of notices: the system's trust store, host names checked."""
    context = ssl.create_default_context()
    context.sslsocket_class = _CappedTLSSocket
    return context


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection opened through the address policy, every call capped by
    `deadline` (monotonic seconds; set it before each request)."""

    def __init__(self, origin: Origin, allow_private: bool) -> None:
        super().__init__(origin[1], origin[2])
        self.scheme = origin[0]
        self.allow_private = allow_private
        self.deadline = 0.0

    def set_deadline(self, deadline: float) -> None:
        """Cap the next request (and its answer) at `deadline` (monotonic seconds)."""
        self.deadline = deadline
        if isinstance(self.sock, _CappedSocket | _CappedTLSSocket):
            self.sock.deadline = deadline

    def connect(self) -> None:
        """Connect to an allowed address of the host (raises `TargetRefused` if none)."""
        try:
            raw = outbound.connect(self.host, self.port, self._left(), self.allow_private)
        except TargetRefused as exc:
            if isinstance(exc.__context__, socket.gaierror):
                # The name did not resolve: the DNS may answer later, so this is a
                # network error (tried again), not the policy's refusal (final).
                raise exc.__context__ from None
            raise
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: _CappedSocket | _CappedTLSSocket
            if self.scheme == "https":
                raw.settimeout(self._left())  # the handshake, as one call, within the cap
                wrapped = _tls().wrap_socket(raw, server_hostname=self.host)
                assert isinstance(wrapped, _CappedTLSSocket)
                sock = wrapped
            else:
                sock = _CappedSocket(fileno=raw.detach())
        except BaseException:
            raw.close()
            raise
        sock.deadline = self.deadline
        self.sock = sock

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's time cap is spent")
        return left


def _connections() -> dict[tuple[Origin, bool], _Connection]:
    """This thread's connections (never ones inherited from a parent across a fork)."""
    if getattr(_local, "pid", None) != os.getpid():
        _local.pid = os.getpid()
        _local.conns = {}
    conns: dict[tuple[Origin, bool], _Connection] = _local.conns
    return conns


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float,
         allow_private: bool = False) -> int:
    """POST `body` to `url` and return the HTTP status; redirects are not followed.

    Args:
        timeout_s: seconds for the whole request: connect, send, and the whole answer
            (see the module docstring).
        allow_private: let loopback and private addresses pass the address policy
            (COVERS_ALLOW_PRIVATE_TARGETS; default False, as in production).

    Raises:
        ValueError: `url` is not an http(s) URL with a host.
        kie_covers.core.addresses.TargetRefused: the host's address is not allowed.
        socket.gaierror: the host does not resolve.
        OSError, http.client.HTTPException: no answer in time (refused, timed out,
            closed); `TimeoutError` when the cap is spent.
    """
    deadline = time.monotonic() + timeout_s
    origin = origin_of(url)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conns = _connections()
    key = (origin, allow_private)
    for _ in range(2):
        conn = conns.pop(key, None)
        reused = conn is not None
        if conn is None:
            conn = _Connection(origin, allow_private)
        conn.set_deadline(deadline)
        try:
            conn.request("POST", path, body=body, headers=headers)
            answer = conn.getresponse()
            answer.read(MAX_ANSWER_BYTES)
        except _STALE:
            conn.close()
            if reused:  # closed while idle: the request never reached the app; once more
                continue
            raise
        except BaseException:
            conn.close()
            raise
        if answer.will_close or not answer.isclosed():
            conn.close()  # the app closes it, or its answer was longer than we read
        else:
            conns[key] = conn
        return answer.status
    raise http.client.RemoteDisconnected("connection closed twice")
