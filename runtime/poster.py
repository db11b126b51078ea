"""POSTs to the app's callback URLs over kept-alive connections (`post`).

Outcome notices go out once per cover, so their cost per request matters: the
standard library's `http.client` with one kept-alive connection per origin and
thread costs a fraction of a `requests` call (no session merging, no proxy
lookups from the environment on every call, no adapters). Notices are sent
straight to the app, never through an HTTP proxy.
"""

from __future__ import annotations

import http.client
import os
import threading
from urllib.parse import urlsplit

#: Bytes of an app's answer that are read; a longer answer closes the connection.
MAX_ANSWER_BYTES = 65536

_local = threading.local()
#: Errors that mean a kept-alive connection was closed by the app while idle.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

Origin = tuple[str, str, int]


def _connections() -> dict[Origin, http.client.HTTPConnection]:
    """This thread's connections (never ones inherited from a parent across a fork)."""
    if getattr(_local, "pid", None) != os.getpid():
        _local.pid = os.getpid()
        _local.conns = {}
    conns: dict[Origin, http.client.HTTPConnection] = _local.conns
    return conns


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST `body` to `url` and return the HTTP status; redirects are not followed.

    Args:
        timeout_s: seconds to connect, and to wait for each read of the answer.

    Raises:
        ValueError: `url` is not an http(s) URL with a host.
        OSError, http.client.HTTPException: no answer (refused, timed out, closed).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    origin: Origin = (parts.scheme, parts.hostname, port)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conns = _connections()
    for _ in range(2):
        conn = conns.pop(origin, None)
        reused = conn is not None
        if conn is None:
            kind = http.client.HTTPSConnection if parts.scheme == "https" else \
                http.client.HTTPConnection
            conn = kind(parts.hostname, port, timeout=timeout_s)
        else:
            conn.timeout = timeout_s
            if conn.sock is not None:
                conn.sock.settimeout(timeout_s)
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
            conns[origin] = conn
        return answer.status
    raise http.client.RemoteDisconnected("connection closed twice")
