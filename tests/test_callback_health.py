"""Workers check that COVERS_CALLBACK_URL reaches a live `covers web` (its /healthz),
and `covers web` listens where that URL points. Real HTTP servers on 127.0.0.1 only."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.core import GaugeMetricFamily

from kie_covers.config import keys
from kie_covers.runtime.callback_health import CallbackWatch, health_url, probe
from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.worker.metrics_server import RedisCollector
from kie_covers.worker.web import callback_port_mismatch
from tests.conftest import STORE_DB, empty_db
from tests.services import serve_in_thread, stop_server


class _Health(BaseHTTPRequestHandler):
    """Answers GET /healthz with the server's `status`, anything else with 404."""

    def do_GET(self) -> None:
        status = self.server.status if self.path == "/healthz" else 404  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class HealthServer:
    """A /healthz server on 127.0.0.1:`port`, started and stopped at will."""

    def __init__(self, port: int, status: int = 200) -> None:
        self.port, self.status = port, status
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> HealthServer:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _Health)
        self.server.status = self.status  # type: ignore[attr-defined]
        serve_in_thread(self.server)
        return self

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server)
            self.server = None


@pytest.fixture
def health() -> Iterator[HealthServer]:
    server = HealthServer(free_port())
    try:
        yield server
    finally:
        server.stop()


def _watch(port: int, results: list[bool], grace_s: float = 0.3) -> CallbackWatch:
    return CallbackWatch(f"http://127.0.0.1:{port}/kie/callback?x=1", 30.0, grace_s=grace_s,
                         every_s=0.05, recheck_s=60, timeout_s=2, report=results.append)


def test_the_health_url_sits_beside_the_callback_path() -> None:
    assert health_url("http://127.0.0.1:8000/kie/callback") == "http://127.0.0.1:8000/healthz"
    assert (health_url("https://h.example/covers/kie/callback/?job=1#x")
            == "https://h.example/covers/healthz")
    assert health_url("https://h.example/hooks/kie") == "https://h.example/healthz"
    assert (health_url("https://u:pw@h.example:8443/kie/callback", with_credentials=False)
            == "https://h.example:8443/healthz")


def test_probe_tells_up_from_down(health: HealthServer) -> None:
    url = f"http://127.0.0.1:{health.port}/healthz"
    assert probe(url) == "cannot connect"
    health.start()
    assert probe(url) is None
    assert probe(f"http://127.0.0.1:{health.port}/other") == "answered HTTP 404"


def test_a_live_endpoint_is_reported_up_without_a_warning(
    health: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    health.start()
    results: list[bool] = []
    with caplog.at_level(logging.INFO, logger="covers.callback_health"):
        assert _watch(health.port, results).check_at_start() is True
    assert results == [True]
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "answers" in caplog.text


def test_an_endpoint_that_never_answers_is_one_warning_and_a_zero(
    health: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    results: list[bool] = []
    with caplog.at_level(logging.INFO, logger="covers.callback_health"):
        assert _watch(health.port, results).check_at_start() is False
    assert results == [False]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and len(caplog.records) == 1
    message = warnings[0].getMessage()
    assert f"GET http://127.0.0.1:{health.port}/healthz: cannot connect" in message
    assert "every 30 s" in message and "COVERS_WEB_PORT" in message


def test_an_unhealthy_answer_counts_as_down(
    health: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    health.status = 503  # covers web answers 503 when its Redis does not
    health.start()
    results: list[bool] = []
    with caplog.at_level(logging.WARNING, logger="covers.callback_health"):
        assert _watch(health.port, results).check_at_start() is False
    assert "answered HTTP 503" in caplog.text


def test_a_web_that_comes_up_during_the_grace_period_is_no_warning(
    health: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    # As under honcho: the worker starts checking before the web line listens.
    results: list[bool] = []
    watch = _watch(health.port, results, grace_s=30)
    later = threading.Timer(0.3, health.start)
    later.start()
    with caplog.at_level(logging.INFO, logger="covers.callback_health"):
        assert watch.check_at_start() is True
    later.join()
    assert results == [True]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_later_checks_log_only_changes(
    health: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    health.start()
    results: list[bool] = []
    watch = _watch(health.port, results)
    assert watch.check_at_start() is True
    with caplog.at_level(logging.INFO, logger="covers.callback_health"):
        health.stop()
        assert watch.check_again() is False
        assert watch.check_again() is False  # still down: no second warning
        health.start()
        assert watch.check_again() is True
        assert watch.check_again() is True  # still up: nothing logged
    assert results == [True, False, False, True, True]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert "stopped answering" in caplog.records[0].getMessage()
    assert "answers again" in caplog.records[1].getMessage()


def test_the_watch_thread_stops_when_asked(health: HealthServer) -> None:
    results: list[bool] = []
    watch = _watch(health.port, results, grace_s=60)
    thread = watch.start()
    watch.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_the_exporter_serves_the_gauge(redis_server: RedisServer) -> None:
    with empty_db(redis_server, STORE_DB) as client:
        collector = RedisCollector(client)
        assert "covers_callback_endpoint_up" not in {f.name for f in collector.collect()}
        client.hset(keys.METRIC_GAUGES, "callback_endpoint_up", 0.0)
        client.hset(keys.METRIC_GAUGES, "not_a_known_gauge", 5)
        gauges = [f for f in collector.collect() if isinstance(f, GaugeMetricFamily)]
        assert [(g.name, [s.value for s in g.samples]) for g in gauges] == [
            ("covers_callback_endpoint_up", [0.0])]


@pytest.mark.parametrize(("url", "port", "mismatch"), [
    ("http://127.0.0.1:8000/kie/callback", 8000, False),
    ("http://127.0.0.1:8000/kie/callback", 5200, True),
    ("http://localhost:8200/kie/callback", 8000, True),
    ("http://127.0.0.1/kie/callback", 80, False),
    # A public URL reaches the web through a proxy whose ports are not ours to judge.
    ("https://covers.example.com/kie/callback", 8000, False),
    (None, 8000, False),
])
def test_covers_web_says_when_a_loopback_callback_url_names_another_port(
    url: str | None, port: int, mismatch: bool
) -> None:
    reason = callback_port_mismatch(url, port)
    assert (reason is not None) is mismatch
    if reason:
        assert str(port) in reason and "COVERS_WEB_PORT" in reason
