"""What a soak run starts and stops: Redis, the Kie stand-in, ``covers web``, workers.

`SoakServices` starts a private redis-server (``appendonly yes``), the stand-in in
this process (no rate limit, covers ready after COVER_SECONDS, signed callbacks),
the callback endpoint and the workers (`SoakWorkers`, which can lose a member to
SIGKILL and take on a replacement), with the short waits the test suite uses
(BASE_SETTINGS), and stops them all on every exit path. The rounds are in
`bench.soak_rounds`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from bench.common import (
    READY_TIMEOUT_S,
    Workers,
    celery_ping,
    set_environ,
    start_web,
    stderr,
    stop_all,
)
from bench.proc import Memory, tree_memory
from kie_covers.runtime.app import app
from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.standin import KieStandin, StandinConfig

#: The Celery queue of the soak's workers.
QUEUE = "covers-soak"
#: Seconds from an accepted generate to the finished cover, in the stand-in.
COVER_SECONDS = 0.3
#: Stand-in credits: far more than any soak uses.
CREDITS = 1e12
#: Seconds to keep retrying a read of the job store while Redis is unreachable.
READ_RETRY_S = 30.0
#: Seconds between two tries while Redis is unreachable.
RETRY_PAUSE_S = 0.2
#: Seconds the admin client waits to connect to Redis and for an answer.
ADMIN_TIMEOUT_S = 5

#: Settings of every process (as BASE_ENV in tests/conftest.py, with 8 attempts). The
#: heartbeat timers keep their defaults; COVERS_REDISPATCH_AFTER is 60 s, far above
#: COVERS_DEAD_AFTER (so a kill-all round's recovery can only come from the heartbeats)
#: yet within ROUND_TIMEOUT_S: a message the broker loses in transit on a cut connection
#: or a Redis restart (about 1 in 200 jobs of those rounds) comes back by that lease.
BASE_SETTINGS = {
    "KIE_POLL_INTERVAL": "0.5",
    "KIE_POLL_TIMEOUT": "60",
    "KIE_HTTP_TIMEOUT": "2",
    "COVERS_QUEUE": QUEUE,
    "COVERS_DISPATCH_INTERVAL": "0.1",
    "COVERS_REDISPATCH_AFTER": "60",
    "COVERS_BACKOFF_BASE": "0.2",
    "COVERS_BACKOFF_MAX": "0.5",
    "COVERS_MAINTENANCE_PAUSE": "0.5",
    "COVERS_MAX_ATTEMPTS": "8",
    "COVERS_CREDITS_MAX_WAIT": "60",
    "COVERS_NOTIFY_MAX_AGE": "3",
    "KIE_RATE_LIMIT": "1000/1s",
    "KIE_STATUS_RATE_LIMIT": "1000/1s",
    "COVERS_LOG_LEVEL": "INFO",
    # The stand-in and the notice sink listen on 127.0.0.1.
    "COVERS_ALLOW_PRIVATE_TARGETS": "1",
}

T = TypeVar("T")


class SoakWorkers(Workers):
    """`Workers` that can also lose a member to SIGKILL and take on a replacement.

    Replacements get the next index (log ``bench<i>.log``, node ``bench<i>@host``),
    started with the same command line as `Workers.start`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.killed: set[int] = set()

    def alive(self) -> list[int]:
        """Indexes of the workers whose main process is running."""
        return [i for i, p in enumerate(self.processes)
                if i not in self.killed and p.poll() is None]

    def kill(self, index: int) -> None:
        """SIGKILL worker `index` and its pool children (its process group) and reap it."""
        process = self.processes[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.killed.add(index)

    def add(self, timeout_s: float = READY_TIMEOUT_S) -> int:
        """Start one more worker and wait for ``ready.`` in its log; returns its index.

        Raises:
            RuntimeError: when it exits or is not ready after `timeout_s` seconds.
        """
        return self.add_many(1, timeout_s)[0]

    def add_many(self, count: int, timeout_s: float = READY_TIMEOUT_S) -> list[int]:
        """Start `count` more workers at once, then wait for ``ready.`` in each log;
        returns their indexes.

        Raises:
            RuntimeError: when one exits or is not ready after `timeout_s` seconds.
        """
        indexes = []
        for _ in range(count):
            indexes.append(len(self.processes))
            self.processes.append(self.spawn(indexes[-1]))
        self.count = len(self.processes)
        deadline = time.monotonic() + timeout_s
        for index in indexes:
            process, path = self.processes[index], self.log_path(index)
            while "ready." not in path.read_text(errors="replace"):
                if process.poll() is not None:
                    raise RuntimeError(f"worker bench{index} exited with "
                                       f"{process.returncode}:\n{self.log_tail(index)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker bench{index} not ready after {timeout_s:g}s")
                time.sleep(0.1)
        return indexes

    def stop(self) -> None:
        """Stop every worker not killed already (SIGTERM, then SIGKILL after the grace)."""
        stop_all([p for i, p in enumerate(self.processes) if i not in self.killed])


def retrying(call: Callable[[], T], what: str, within_s: float = READ_RETRY_S) -> T:
    """``call()``, tried again on Redis connection errors for up to `within_s` seconds
    (default READ_RETRY_S); named `what` in the RuntimeError raised after that."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError,
                redis.exceptions.BusyLoadingError) as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: Redis unreachable for {within_s:g}s: "
                                   f"{error}") from error
            time.sleep(RETRY_PAUSE_S)


class SoakServices:
    """The services of one soak run: started by `start`, stopped by `stop`.

    Args:
        workers: worker processes.
        concurrency: pool slots per worker process.
        log_dir: temp directory for the logs and Redis's files.
    """

    def __init__(self, workers: int, concurrency: int, log_dir: Path) -> None:
        self.worker_count = workers
        self.concurrency = concurrency
        self.log_dir = log_dir
        self.redis_server: RedisServer | None = None
        self.standin: KieStandin | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: SoakWorkers | None = None
        self.admin: redis.Redis | None = None

    def start(self) -> None:
        """Start Redis, the stand-in, the callback endpoint and the workers.

        Puts the settings into this process's environment before the project is
        first used (it reads them once, then), so `enqueue_cover` and `get_cover`
        here use the same Redis and queue as the workers.
        """
        api_key = "soak-" + secrets.token_hex(8)
        hmac_key = "soak-hmac-" + secrets.token_hex(12)
        stderr("starting redis-server and the stand-in")
        self.redis_server = RedisServer(self.log_dir / "redis", appendonly=True).start()
        self.admin = redis.Redis(host="127.0.0.1", port=self.redis_server.port,
                                 socket_timeout=ADMIN_TIMEOUT_S,
                                 socket_connect_timeout=ADMIN_TIMEOUT_S)
        self.standin = KieStandin(StandinConfig(
            api_keys=(api_key,), rate_limit=None, cover_seconds=COVER_SECONDS,
            credits=CREDITS, webhook_hmac_key=hmac_key)).start()
        web_port = free_port()
        env = set_environ({
            **BASE_SETTINGS,
            "REDIS_URL": self.redis_server.url,
            "KIE_BASE_URL": self.standin.base_url,
            "KIE_API_KEY": api_key,
            "KIE_WEBHOOK_HMAC_KEY": hmac_key,
            "COVERS_CALLBACK_URL": f"http://127.0.0.1:{web_port}/kie/callback",
            "COVERS_STATE_DIR": str(self.log_dir / "state"),
        })
        stderr(f"starting the callback endpoint on 127.0.0.1:{web_port}")
        self.web = start_web(web_port, env, self.log_dir / "web.log")
        stderr(f"starting {self.worker_count} workers x {self.concurrency} slots")
        self.workers = SoakWorkers("kie_covers.worker", QUEUE, self.worker_count, env,
                                   self.log_dir, loglevel="INFO",
                                   concurrency=self.concurrency)
        self.workers.start(lambda: celery_ping(app))

    def stop(self) -> None:
        """Stop everything started (workers first, Redis last); never raises."""
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.workers is not None:
            steps.append(("workers", self.workers.stop))
        if self.web is not None:
            web = self.web
            steps.append(("callback endpoint", lambda: stop_all([web])))
        if self.standin is not None:
            steps.append(("stand-in", self.standin.stop))
        if self.admin is not None:
            steps.append(("admin client", self.admin.close))
        if self.redis_server is not None:
            server = self.redis_server
            steps.append(("redis-server", server.stop))
        for name, step in steps:
            try:
                step()
            except Exception as error:
                stderr(f"stopping the {name}: {type(error).__name__}: {error}")
        if self.redis_server is not None and self.redis_server.process is not None:
            with contextlib.suppress(Exception):
                self.redis_server.stop(hard=True)

    def worker_memory(self) -> Memory:
        """Memory of the running workers and their pool children."""
        assert self.workers is not None
        return tree_memory(self.workers.processes[i].pid for i in self.workers.alive())

    def redis_used_memory(self, within_s: float = READ_RETRY_S) -> int:
        """Redis ``INFO memory`` used_memory, bytes (Redis given `within_s` s to answer,
        default READ_RETRY_S)."""
        assert self.admin is not None
        admin = self.admin
        info = retrying(lambda: admin.info("memory"), "INFO memory", within_s)
        return int(info["used_memory"])
