"""`runtime.poster`: the kept-alive, time-capped, address-checked POSTs of outcome notices.

Every server here is a real one on loopback, so the posts pass ``allow_private=True``
(COVERS_ALLOW_PRIVATE_TARGETS=1), except where the refusal is the point.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kie_covers.core.addresses import TargetRefused
from kie_covers.runtime import poster
from tests.notice_apps import FastApp, SlowApp
from tests.services import serve_in_thread, stop_server


class _App(ThreadingHTTPServer):
    """A loopback app that counts connections and requests; can drop idle connections."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0
        self.bodies: list[bytes] = []
        self.close_after_answer = False
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/app/cb?x=1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _App

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body)
        status = 204 if self.path == "/app/cb?x=1" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if self.server.close_after_answer:
            # Closed while idle, without saying so: what a keep-alive timeout does.
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app() -> Iterator[_App]:
    server = _App()
    serve_in_thread(server)
    yield server
    stop_server(server)


def test_posts_reuse_one_connection_and_return_the_status(app: _App) -> None:
    headers = {"Content-Type": "application/json"}
    assert poster.post(app.url, b'{"n": 1}', headers, 5, allow_private=True) == 204
    assert poster.post(app.url, b'{"n": 2}', headers, 5, allow_private=True) == 204
    assert poster.post(app.url.replace("/app/cb", "/nope"), b"{}", headers, 5,
                       allow_private=True) == 404
    assert app.bodies == [b'{"n": 1}', b'{"n": 2}', b"{}"]
    assert app.connections == 1


def test_a_connection_the_app_closed_while_idle_is_replaced_and_nothing_is_sent_twice(
    app: _App,
) -> None:
    app.close_after_answer = True
    headers = {"Content-Type": "application/json"}
    for n in range(3):
        assert poster.post(app.url, str(n).encode(), headers, 5, allow_private=True) == 204
    assert app.bodies == [b"0", b"1", b"2"]
    assert app.connections == 3


def test_refused_and_malformed_urls_raise() -> None:
    with pytest.raises(ValueError):
        poster.post("ftp://127.0.0.1/x", b"", {}, 1, allow_private=True)
    with pytest.raises(OSError):
        poster.post("http://127.0.0.1:9/x", b"", {}, 1, allow_private=True)


@pytest.mark.e2e  # an app that trickles its answer for seconds
def test_an_answer_trickled_a_byte_a_second_is_cut_at_the_total_cap() -> None:
    # Given an app that answers one byte a second: every read gets a byte well within
    # any per-read timeout, so only a cap on the whole request ends it
    app = SlowApp(interval_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            poster.post(app.url, b'{"n": 1}', {"Content-Type": "application/json"}, 2.5,
                        allow_private=True)
        took = time.monotonic() - started
        # Then the request ends at the cap, and the app sees the connection closed then
        assert 2.4 <= took < 3.2
        assert len(app.received) == 1 and app.received[0].body == b'{"n": 1}'
        deadline = time.monotonic() + 3
        while app.received[0].ended is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = app.received[0].ended
        assert ended is not None and ended - app.received[0].started < 3.2
    finally:
        app.stop()


def test_the_cap_counts_from_the_start_of_the_request_not_per_read(app: _App) -> None:
    # A cap already spent sends nothing at all
    with pytest.raises(TimeoutError):
        poster.post(app.url, b"late", {}, 0.000001, allow_private=True)
    assert app.bodies == []


def test_loopback_and_private_targets_are_refused_unless_allowed() -> None:
    # Given apps on 127.0.0.1 and 127.0.0.2
    apps = [FastApp("127.0.0.1"), FastApp("127.0.0.2")]
    try:
        for app in apps:
            # Then without allow_private nothing connects to them
            with pytest.raises(TargetRefused, match="loopback"):
                poster.post(app.url, b"{}", {}, 2)
            assert app.log.connections == 0
        # And with it they are reached
        assert poster.post(apps[1].url, b"{}", {}, 2, allow_private=True) == 204
        # A connection kept alive under the loose policy is not reused under the strict one
        with pytest.raises(TargetRefused):
            poster.post(apps[1].url, b"{}", {}, 2)
        assert len(apps[1].received) == 1
    finally:
        for app in apps:
            app.stop()


def test_https_urls_get_a_tls_handshake_within_the_cap() -> None:
    # Given a plain TCP server that keeps the first bytes it gets, then never answers
    listener = socket.create_server(("127.0.0.1", 0))
    first: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            first.append(conn.recv(5))
            time.sleep(3)

    threading.Thread(target=serve, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(OSError):
            poster.post(f"https://127.0.0.1:{listener.getsockname()[1]}/cb", b"{}", {}, 1.0,
                        allow_private=True)
        # Then the client spoke TLS (a handshake record), and gave up at the cap
        assert time.monotonic() - started < 1.8
        assert first and first[0][:1] == b"\x16"
    finally:
        listener.close()


def test_a_host_that_does_not_resolve_is_a_network_error_not_a_refusal() -> None:
    # The DNS may answer later: the notice is tried again, not given up
    with pytest.raises(socket.gaierror):
        poster.post("http://no-such-host.invalid/cb", b"{}", {}, 2)
