"""What every run of `bench.perf` starts: Redis, the Kie stand-in, the app's sink, workers.

A run (one child process of ``python -m bench.perf``) enters `stage`, which
starts a fresh redis-server, the stand-in (in this process, no rate limit), a
loopback HTTP server playing the app (`Sink`) and, where callbacks are wanted,
``covers web``; it puts the run's settings into this process's environment, which
the workers inherit. The product reads its settings on first use, not at import,
so importing it at the top of the run modules is safe: the first use comes after
`stage` has set the environment.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import Workers, celery_ping, set_environ, start_web, stderr, stop_all, wait_all
from kie_covers import get_cover
from kie_covers.runtime.app import app
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.standin import KieStandin, StandinConfig
from kie_covers.store.record import Job

#: Celery queue of our workers, and of the plain ones.
QUEUE_OURS = "perf-ours"
QUEUE_PLAIN = "plain-perf"
#: Stand-in credits: enough that no run ever hits 402.
CREDITS = 1e9
#: Limits for both limiters: high enough never to bind.
NO_LIMIT = "100000/1s"
#: Seconds a run waits for its jobs (and notices) before it gives up.
WAIT_TIMEOUT_S = 600.0
#: Calls made before enqueues are timed (throughput and enqueue parts): connections,
#: script loads and compiled regexes are not what a call costs.
ENQUEUE_WARMUP = 100


# -- the app's side: a sink for notices and callbacks -------------------------------


class Sink:
    """A loopback HTTP server playing the app: answers 204 to every POST and counts them.

    Bodies with a ``jobId`` are our notices; others are Kie callbacks (the plain
    pipeline's, which go straight to the app).
    """

    def __init__(self) -> None:
        self.notices = 0
        self.callbacks = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.count(body)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.request_queue_size = 128
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def count(self, body: bytes) -> None:
        """Count one POST body."""
        with self._lock:
            if b'"jobId"' in body:
                self.notices += 1
            else:
                self.callbacks += 1

    @property
    def url(self) -> str:
        """The URL jobs carry as their ``callBackUrl``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/app/cb"

    def start(self) -> Sink:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


# -- one run's services -----------------------------------------------------------------


@dataclass
class Stage:
    """What a run has started: Redis, the stand-in, the app sink, maybe ``covers web``.

    Attributes:
        log_dir: temp directory of the run's logs.
        redis: the run's redis-server.
        standin: the Kie stand-in (in this process).
        sink: the app's stand-in (notices, callbacks).
        api_key: the stand-in's key.
        env: the environment of the workers (also this process's ``os.environ``).
        web: the ``covers web`` process, if any.
    """

    log_dir: Path
    redis: RedisServer
    standin: KieStandin
    sink: Sink
    api_key: str
    env: dict[str, str]
    web: subprocess.Popen[bytes] | None = None

    @property
    def redis_pid(self) -> int:
        """The redis-server's pid."""
        assert self.redis.process is not None
        return self.redis.process.pid

    def wait_ended(self, ids: Sequence[str], notices: int, notices_wait_s: float,
                   interval_s: float = 0.1) -> list[str]:
        """Wait until every job of `ids` has ended (at most WAIT_TIMEOUT_S, looking every
        `interval_s` seconds), then until the sink has counted `notices` notices in all
        (at most `notices_wait_s` seconds more).

        Returns:
            The ids of the jobs that never ended.
        """
        _, pending = wait_all(job_ended, ids, WAIT_TIMEOUT_S, interval_s=interval_s)
        wait_for(lambda: self.sink.notices >= notices, notices_wait_s)
        return pending


@contextlib.contextmanager
def stage(name: str, cover_s: float, settings: dict[str, str], web: bool,
          keep_logs: bool) -> Iterator[Stage]:
    """Start a fresh Redis, stand-in and app sink (and ``covers web`` if `web`).

    Sets this process's environment to `settings` plus REDIS_URL, KIE_BASE_URL,
    KIE_API_KEY, COVERS_STATE_DIR (and COVERS_CALLBACK_URL with `web`) before
    anything uses the product. Stops everything on the way out; the logs are
    removed unless `keep_logs` or an error.

    Args:
        name: names the temp directory (``kie-perf-<name>-…``).
        cover_s: seconds a cover takes in the stand-in.
        settings: environment variables of the run (see `ours_settings`).
        web: start ``covers web`` on a free port and send Kie's callbacks there.
        keep_logs: keep the logs of a clean run too.
    """
    log_dir = Path(tempfile.mkdtemp(prefix=f"kie-perf-{name}-"))
    api_key = "perf-" + secrets.token_hex(8)
    redis_server = RedisServer(log_dir / "redis").start()
    standin: KieStandin | None = None
    sink: Sink | None = None
    web_process: subprocess.Popen[bytes] | None = None
    ok = False
    try:
        standin = KieStandin(StandinConfig(api_keys=(api_key,), rate_limit=None,
                                           cover_seconds=cover_s, credits=CREDITS)).start()
        sink = Sink().start()
        env_settings = {"REDIS_URL": redis_server.url, "KIE_BASE_URL": standin.base_url,
                        "KIE_API_KEY": api_key, "COVERS_STATE_DIR": str(log_dir / "state"),
                        **settings}
        port = free_port() if web else 0
        if web:
            env_settings["COVERS_CALLBACK_URL"] = f"http://127.0.0.1:{port}/kie/callback"
        env = set_environ(env_settings)
        if web:
            web_process = start_web(port, env, log_dir / "web.log")
        yield Stage(log_dir, redis_server, standin, sink, api_key, env, web_process)
        ok = True
    finally:
        if web_process is not None:
            stop_all([web_process])
        if sink is not None:
            sink.stop()
        if standin is not None:
            standin.stop()
        with contextlib.suppress(Exception):
            redis_server.stop()
        if ok and not keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            stderr(f"{name}: logs kept in {log_dir}")


def ours_settings(poll_s: float, dispatch_s: float | None) -> dict[str, str]:
    """Our workers' settings: no binding limit, queue QUEUE_OURS, KIE_POLL_INTERVAL
    `poll_s` seconds, COVERS_DISPATCH_INTERVAL `dispatch_s` seconds (None: its
    default)."""
    settings = {"KIE_RATE_LIMIT": NO_LIMIT, "KIE_STATUS_RATE_LIMIT": NO_LIMIT,
                "KIE_POLL_INTERVAL": f"{poll_s:g}", "COVERS_QUEUE": QUEUE_OURS,
                "COVERS_LOG_LEVEL": "WARNING", "PLAIN_QUEUE": QUEUE_PLAIN,
                # The stand-in and the notice sink listen on 127.0.0.1.
                "COVERS_ALLOW_PRIVATE_TARGETS": "1"}
    if dispatch_s is not None:
        settings["COVERS_DISPATCH_INTERVAL"] = f"{dispatch_s:g}"
    return settings


def start_ours(st: Stage, workers: int, concurrency: int) -> Workers:
    """Start `workers` of our worker processes (`concurrency` pool slots each) on `st`
    and wait until they take tasks; they are stopped again if that fails."""
    pool = Workers("kie_covers.worker", QUEUE_OURS, workers, st.env, st.log_dir,
                   concurrency=concurrency)
    try:
        pool.start(lambda: celery_ping(app))
    except BaseException:
        pool.stop()
        raise
    return pool


def job_ended(job_id: str) -> bool:
    """True when our job `job_id` succeeded or failed (`get_cover`)."""
    return get_cover(job_id)["state"] in ("succeeded", "failed")


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05
             ) -> bool:
    """Poll `predicate` every `interval_s` seconds (default 0.05) until it holds (True)
    or `timeout_s` seconds pass (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def read_jobs(job_ids: Sequence[str]) -> list[Job | None]:
    """The job record of each id, None when missing (`JobStore.fetch_many`, pipelined)."""
    return get_store().fetch_many(job_ids)
