"""`tasks.poster`: the kept-alive POSTs that carry outcome notices to the app."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kie_covers.runtime import poster


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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_posts_reuse_one_connection_and_return_the_status(app: _App) -> None:
    headers = {"Content-Type": "application/json"}
    assert poster.post(app.url, b'{"n": 1}', headers, 5) == 204
    assert poster.post(app.url, b'{"n": 2}', headers, 5) == 204
    assert poster.post(app.url.replace("/app/cb", "/nope"), b"{}", headers, 5) == 404
    assert app.bodies == [b'{"n": 1}', b'{"n": 2}', b"{}"]
    assert app.connections == 1


def test_a_connection_the_app_closed_while_idle_is_replaced_and_nothing_is_sent_twice(
    app: _App,
) -> None:
    app.close_after_answer = True
    headers = {"Content-Type": "application/json"}
    for n in range(3):
        assert poster.post(app.url, str(n).encode(), headers, 5) == 204
    assert app.bodies == [b"0", b"1", b"2"]
    assert app.connections == 3


def test_refused_and_malformed_urls_raise() -> None:
    with pytest.raises(ValueError):
        poster.post("ftp://127.0.0.1/x", b"", {}, 1)
    with pytest.raises(OSError):
        poster.post("http://127.0.0.1:9/x", b"", {}, 1)
