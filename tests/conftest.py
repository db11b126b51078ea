"""Fixtures: a private Redis server, the Kie stand-in, workers and the web endpoint.

The suite starts its own redis-server (so it can restart it and so it never
touches a server it was not pointed at), the stand-in on loopback, and real
worker processes. Settings go through the environment, as in production.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.standin import KieStandin, StandinConfig
from tests.services import (
    BROKERS,
    BeatProcess,
    StartBeat,
    StartWorker,
    WebProcess,
    WorkerProcess,
)

API_KEY = "test-key-" + secrets.token_hex(8)
HMAC_KEY = "hmac-" + secrets.token_hex(12)
QUEUE = "covers-test"

#: Settings every test process and worker uses: fast polls and short waits.
BASE_ENV = {
    "KIE_API_KEY": API_KEY,
    "KIE_WEBHOOK_HMAC_KEY": HMAC_KEY,
    "KIE_POLL_INTERVAL": "0.5",
    "KIE_POLL_TIMEOUT": "60",
    "KIE_HTTP_TIMEOUT": "2",
    "COVERS_QUEUE": QUEUE,
    "COVERS_DISPATCH_INTERVAL": "0.1",
    "COVERS_REDISPATCH_AFTER": "7",
    "COVERS_BACKOFF_BASE": "0.2",
    "COVERS_BACKOFF_MAX": "0.5",
    "COVERS_MAINTENANCE_PAUSE": "0.5",
    "COVERS_MAX_ATTEMPTS": "4",
    "COVERS_CREDITS_MAX_WAIT": "60",
    "COVERS_NOTIFY_MAX_AGE": "3",
    "KIE_RATE_LIMIT": "1000/1s",
    "KIE_STATUS_RATE_LIMIT": "1000/1s",
    # The stand-in's images and the apps' notice receivers listen on 127.0.0.1.
    "COVERS_ALLOW_PRIVATE_TARGETS": "1",
}

_state: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Start Redis and the stand-in before any project module reads its settings."""
    if hasattr(config, "workerinput"):
        return
    run_dir = Path(config.rootpath) / ".covers" / f"test-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(run_dir / "redis").start()
    standin = KieStandin(StandinConfig(api_keys=(API_KEY,), rate_limit=None,
                                       cover_seconds=0.3, webhook_hmac_key=HMAC_KEY)).start()
    web_port = free_port()
    os.environ.update(BASE_ENV)
    os.environ.update({
        "REDIS_URL": redis_server.url,
        "KIE_BASE_URL": standin.base_url,
        "COVERS_CALLBACK_URL": f"http://127.0.0.1:{web_port}/kie/callback",
    })
    _state.update(redis=redis_server, standin=standin, run_dir=run_dir, web_port=web_port)


def pytest_report_header() -> str:
    return f"kie-covers: brokers under test: {', '.join(BROKERS)}"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast (unmarked) tests first, then the end-to-end ones; otherwise in order.

    So a plain ``python -m pytest`` answers in-process failures before it starts
    any worker process (``-m "not e2e"`` runs the fast layer alone).
    """
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


def pytest_unconfigure(config: pytest.Config) -> None:
    standin = _state.get("standin")
    if isinstance(standin, KieStandin):
        standin.stop()
    server = _state.get("redis")
    if isinstance(server, RedisServer):
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The suite's own redis-server."""
    server = _state["redis"]
    assert isinstance(server, RedisServer)
    return server


@pytest.fixture(scope="session")
def standin_server() -> KieStandin:
    """The Kie stand-in, shared by the session (reset before each test)."""
    server = _state["standin"]
    assert isinstance(server, KieStandin)
    return server


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """Where logs of the suite's processes go."""
    path = _state["run_dir"]
    assert isinstance(path, Path)
    return path


@pytest.fixture
def standin(standin_server: KieStandin, redis_server: RedisServer) -> KieStandin:
    """The stand-in and Redis, both emptied before the test."""
    standin_server.reset()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    return standin_server


#: Redis databases that in-process tests keep to themselves (the suite's workers,
#: web process and producer use database 0, whose due sets they dispatch from).
STORE_DB, TOKENS_DB, NOTICE_DB, LANES_DB, FAIR_DB = 9, 10, 11, 12, 13


@contextlib.contextmanager
def empty_db(server: RedisServer, db: int) -> Iterator[redis.Redis]:
    """A client (decoded strings) on database `db` of the suite's Redis, emptied before
    and after."""
    conn = redis.Redis(host="127.0.0.1", port=server.port, db=db, decode_responses=True)
    conn.flushdb()
    try:
        yield conn
    finally:
        conn.flushdb()
        conn.close()


def unreachable_redis(**options: Any) -> redis.Redis:
    """A client of a loopback port nothing listens on, which tries each command once:
    redis-py's default retries back off for about 3 s before the error the test is about.
    `options` go to ``redis.Redis`` (e.g. ``decode_responses=True``)."""
    return redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0),
                       **options)


def process_env(**overrides: str) -> dict[str, str]:
    """Environment for a child process: this process's settings plus `overrides`."""
    env = dict(os.environ)
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.fixture(scope="session")
def web(run_dir: Path) -> Iterator[WebProcess]:
    """``covers web`` on the port workers hand to Kie as the callback URL."""
    port = _state["web_port"]
    assert isinstance(port, int)
    process = WebProcess(port, process_env(), run_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def worker(run_dir: Path, web: WebProcess) -> Iterator[WorkerProcess]:
    """A worker with the default test settings, shared by the session."""
    process = WorkerProcess("main", process_env(), run_dir).start()
    yield process
    process.stop()


@pytest.fixture
def start_worker(run_dir: Path) -> Iterator[StartWorker]:
    """Factory: start an extra worker with setting overrides; stopped after the test.

    Each gets a queue of its own unless `queue` is given; send jobs to it with
    ``enqueue_cover(..., queue=worker.queue)``.
    """
    started: list[WorkerProcess] = []
    counter = iter(range(1000))

    def start(queue: str | None = None, **overrides: str) -> WorkerProcess:
        name = f"w{os.getpid()}-{len(started)}-{next(counter)}"
        # A queue of its own (unless told), so the session worker takes none of its jobs.
        queue = queue or f"covers-{name}"
        process = WorkerProcess(name, process_env(COVERS_QUEUE=queue, **overrides), run_dir)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_beat(run_dir: Path) -> Iterator[StartBeat]:
    """Factory: start a real beat process with setting overrides; stopped after the test."""
    started: list[BeatProcess] = []

    def start(**overrides: str) -> BeatProcess:
        name = f"beat{os.getpid()}-{len(started)}-{secrets.token_hex(3)}"
        process = BeatProcess(name, process_env(**overrides), run_dir)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()
