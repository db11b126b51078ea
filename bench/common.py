"""Shared pieces of the benchmarks: worker processes, clean environments, child runs,
metrics, argparse types.

Everything runs on loopback: a private redis-server, the in-process Kie
stand-in, and real ``celery worker`` processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from celery import Celery

from kie_covers.config.settings import parse_rate
from kie_covers.core.errors import SettingsError
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.standin import KieStandin, StandinConfig

#: The project directory (workers run from here so ``-A kie_covers.worker`` and
#: ``-A bench.…`` import).
ROOT = Path(__file__).resolve().parent.parent
#: Seconds a worker has to become ready.
READY_TIMEOUT_S = 60.0
#: Seconds between SIGTERM and SIGKILL when stopping a process.
STOP_GRACE_S = 15.0
#: Prefixes of environment variables the benchmark sets itself; inherited ones are dropped
#: so a developer's shell (e.g. COVERS_CALLBACK_URL) cannot change what is measured.
OWN_ENV_PREFIXES = ("REDIS_URL", "COVERS_", "KIE_", "PLAIN_")


def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without project settings, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_ENV_PREFIXES)}
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def set_environ(settings: Mapping[str, str]) -> dict[str, str]:
    """Make this process's environment `clean_env(settings)`; returns it.

    The project reads its settings on first use (not at import), so a run calls
    this before its first `enqueue_cover` and its workers inherit the same.
    """
    env = clean_env(settings)
    os.environ.clear()
    os.environ.update(env)
    return env


def parse_limit(text: str) -> tuple[int, float]:
    """argparse type of ``--limit``: ``'20/2s'`` -> ``(20, 2.0)``, calls per window of
    that many seconds.

    Raises:
        argparse.ArgumentTypeError: when `text` is not ``<count>/<seconds>s`` with a
            positive count.
    """
    try:
        return parse_rate("--limit", text)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def format_limit(limit: tuple[int, float]) -> str:
    """``(20, 2.0)`` -> ``'20/2s'`` (the form KIE_RATE_LIMIT takes)."""
    return f"{limit[0]}/{limit[1]:g}s"


#: Seconds from an accepted generate to the finished cover, in the stand-in of
#: `limited_kie`.
COVER_SECONDS = 0.5
#: That stand-in's credits: enough that no run ever hits 402.
CREDITS = 1_000_000.0
#: Rate margin of the workers `limited_settings` describes, s: 0.05 absorbs loopback
#: jitter; the default 0.1 costs 5% of a 2 s window (1% of Kie's real 10 s one).
RATE_MARGIN_S = 0.05


@dataclass
class LimitedKie:
    """A run's fresh Redis and Kie stand-in (see `limited_kie`).

    Attributes:
        redis: the redis-server.
        standin: the stand-in, in this process.
        api_key: the one key the stand-in accepts.
    """

    redis: RedisServer
    standin: KieStandin
    api_key: str


@contextlib.contextmanager
def limited_kie(log_dir: Path, limit: tuple[int, float]) -> Iterator[LimitedKie]:
    """Start a fresh redis-server (its files in `log_dir`) and a Kie stand-in that
    allows `limit` generates (calls, seconds) per window, covers taking COVER_SECONDS;
    both are stopped on the way out, on errors too."""
    redis_server = RedisServer(log_dir / "redis").start()
    try:
        api_key = "bench-" + secrets.token_hex(8)
        with KieStandin(StandinConfig(api_keys=(api_key,), rate_limit=limit,
                                      cover_seconds=COVER_SECONDS,
                                      credits=CREDITS)) as standin:
            yield LimitedKie(redis_server, standin, api_key)
    finally:
        with contextlib.suppress(Exception):
            redis_server.stop()


def limited_settings(kie: LimitedKie, limit: tuple[int, float], queue: str
                     ) -> dict[str, str]:
    """The settings of this project's workers and producer against `kie`, told its
    generate limit `limit`, taking `queue`: polls every second, dispatch every 0.05 s,
    a rate margin of RATE_MARGIN_S."""
    return {
        "REDIS_URL": kie.redis.url,
        "KIE_BASE_URL": kie.standin.base_url,
        "KIE_API_KEY": kie.api_key,
        "KIE_RATE_LIMIT": format_limit(limit),
        "KIE_STATUS_RATE_LIMIT": "1000/1s",
        "KIE_POLL_INTERVAL": "1",
        "COVERS_RATE_MARGIN": str(RATE_MARGIN_S),
        "COVERS_QUEUE": queue,
        "COVERS_DISPATCH_INTERVAL": "0.05",
        # The stand-in and the app callback listen on 127.0.0.1.
        "COVERS_ALLOW_PRIVATE_TARGETS": "1",
    }


def error_text(error: BaseException) -> str:
    """How a run reports the error that broke it: type and message, at most 2,000
    characters."""
    return f"{type(error).__name__}: {error}".strip()[:2000]


def stop_all(processes: Sequence[subprocess.Popen[bytes]],
             grace_s: float = STOP_GRACE_S) -> None:
    """Stop processes started with ``start_new_session=True`` (with their children).

    SIGTERM to each process group at once, then SIGKILL to every group still there
    after `grace_s` seconds (and to leftovers, such as pool children whose main
    process is gone).
    """
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)


class Workers:
    """N real ``celery worker`` processes, each a prefork pool of `concurrency` slots.

    Args:
        app_module: what ``celery -A`` loads (``kie_covers.worker`` or ``bench.plain_app``).
        queue: the Celery queue they consume.
        count: how many processes.
        env: their environment.
        log_dir: where ``bench<i>.log`` goes (one file per worker, ``-f``).
        loglevel: Celery's ``--loglevel``.
        concurrency: pool slots per process (default 1).
    """

    def __init__(self, app_module: str, queue: str, count: int, env: Mapping[str, str],
                 log_dir: Path, loglevel: str = "WARNING", concurrency: int = 1) -> None:
        self.concurrency = concurrency
        self.app_module = app_module
        self.queue = queue
        self.count = count
        self.env = dict(env)
        self.log_dir = log_dir
        self.loglevel = loglevel
        self.processes: list[subprocess.Popen[bytes]] = []

    def log_path(self, index: int) -> Path:
        """Log file of worker `index`."""
        return self.log_dir / f"bench{index}.log"

    def spawn(self, index: int) -> subprocess.Popen[bytes]:
        """Start worker `index` (``bench<index>@host``, log emptied first); no waiting."""
        path = self.log_path(index)
        path.write_text("")
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app_module, "worker",
             "-Q", self.queue, "-c", str(self.concurrency), "-P", "prefork",
             "-n", f"bench{index}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel", self.loglevel, "-f", str(path)],
            cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def start(self, ping: Callable[[], Iterable[str]],
              timeout_s: float = READY_TIMEOUT_S) -> Workers:
        """Start every worker, then wait until each is ready to take tasks.

        A worker is ready when it logged ``ready.`` (at ``--loglevel INFO`` or lower)
        or answers `ping` (which returns the node names that replied, e.g.
        ``bench0@host``): at WARNING Celery does not log ``ready.``, and a control
        reply comes from the same consumer once its task queue is consumed.

        Raises:
            RuntimeError: when a worker exits, or is not ready after `timeout_s` seconds.
        """
        for index in range(self.count):
            self.processes.append(self.spawn(index))
        waiting = set(range(self.count))
        deadline = time.monotonic() + timeout_s
        while waiting:
            for index in list(waiting):
                process = self.processes[index]
                if process.poll() is not None:
                    raise RuntimeError(f"worker bench{index} exited with {process.returncode}:"
                                       f"\n{self.log_tail(index)}")
                if "ready." in self.log_path(index).read_text(errors="replace"):
                    waiting.discard(index)
            if waiting:
                replied = {name.partition("@")[0] for name in ping()}
                waiting -= {i for i in waiting if f"bench{i}" in replied}
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(waiting)} not ready after {timeout_s:g}s")
        return self

    def log_tail(self, index: int, chars: int = 3000) -> str:
        """The last `chars` characters of worker `index`'s log."""
        path = self.log_path(index)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        """Stop them all: SIGTERM to each process group, SIGKILL after STOP_GRACE_S seconds."""
        stop_all(self.processes)


def celery_ping(app: Any, timeout_s: float = 0.5) -> list[str]:
    """Node names of the workers of Celery `app` that answer a control ping."""
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    except Exception:  # broker not ready yet; ask again next round
        return []
    return [name for reply in replies for name in reply]


def wait_all(is_done: Callable[[str], bool], ids: Sequence[str], timeout_s: float,
             interval_s: float = 0.1) -> tuple[float, list[str]]:
    """Wait until ``is_done(id)`` holds for every id, checking in order.

    Each round checks the ids still pending, oldest first, and stops at the first one
    not done (jobs mostly end in the order they were sent, and an ended job stays
    ended), so a round costs about one call per job that ended since the last, not
    one per job: the benchmark must not load the Redis it measures.

    Returns:
        The monotonic time (s) at which all were seen done (or the timeout passed),
        and the ids that never ended.
    """
    pending = list(ids)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        while pending and is_done(pending[0]):
            pending.pop(0)
        if pending:
            time.sleep(interval_s)
    return time.monotonic(), pending


def accepted_per_s(times: Sequence[float]) -> float:
    """Accepted generates per second: count / (last - first), times in seconds.

    0 when fewer than two were accepted.
    """
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return len(times) / (times[-1] - times[0])


def full_window_share(times: Sequence[float], limit: int, per_s: float) -> float:
    """How much of the allowed rate was used once the limit binds: ``per_s`` over the
    mean time between call i and call i+limit (1.0 = every window exactly full).

    Unlike count / (last - first), this does not credit the free first burst nor
    blame the time jobs took to arrive. 0 when there are at most `limit` calls.
    """
    if len(times) <= limit:
        return 0.0
    gaps = [times[i] - times[i - limit] for i in range(limit, len(times))]
    mean_gap = sum(gaps) / len(gaps)
    return per_s / mean_gap if mean_gap > 0 else 0.0


def window_violations(times: Sequence[float], limit: int, per_s: float) -> int:
    """Accepted generates that were the (limit+1)-th in some window of `per_s` seconds.

    Call i is one when ``times[i] - times[i - limit] < per_s``: the window ending at
    it then holds limit+1 calls. `times` are sorted, in seconds.
    """
    ordered = sorted(times)
    return sum(1 for i in range(limit, len(ordered))
               if ordered[i] - ordered[i - limit] < per_s)


def duplicates_paid(paid: Mapping[str, int]) -> int:
    """Music tasks charged more than once (from the stand-in's ledger)."""
    return sum(1 for count in paid.values() if count > 1)


def stderr(message: str) -> None:
    """A progress line on stderr (stdout carries the result)."""
    print(message, file=sys.stderr, flush=True)


#: Seconds `start_web` waits for /healthz.
WEB_READY_S = 30.0


def start_web(port: int, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m kie_covers.worker.cli web`` on 127.0.0.1:`port` (own process group).

    Returns once /healthz answers.

    Raises:
        RuntimeError: when it exits or does not answer within WEB_READY_S seconds.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kie_covers.worker.cli", "web", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + WEB_READY_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_all([process])
            raise RuntimeError("covers web did not start: "
                               + log_path.read_text(errors="replace")[-2000:])
        time.sleep(0.1)


def positive_int(text: str) -> int:
    """argparse type: an int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def add_pool_options(parser: argparse.ArgumentParser, workers: int, concurrency: int
                     ) -> None:
    """Add ``--workers`` (worker processes, default `workers`) and ``--concurrency``
    (pool slots per worker process, default `concurrency`) to `parser`."""
    parser.add_argument("--workers", type=positive_int, default=workers,
                        help="worker processes (default %(default)s)")
    parser.add_argument("--concurrency", type=positive_int, default=concurrency,
                        help="pool slots per worker process (default %(default)s)")


def positive_float(text: str) -> float:
    """argparse type: a float above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def exit_on_stop_signals() -> None:
    """Turn the first SIGTERM or SIGINT of this process into ``SystemExit("stopped by
    signal <number>")``; later ones are ignored, so a second signal cannot cut the
    clean-up short. For a benchmark's ``--run`` child, whose parent sends SIGTERM
    on a timeout or Ctrl-C."""

    def on_stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)


#: Prefix of the line on which a benchmark's ``--run`` child prints its result (stdout).
RESULT_MARK = "BENCH-RESULT "
#: Seconds a parent waits for a child beyond the child's own ``--timeout``, and gives
#: it after SIGTERM to stop what it started (default of `run_child`).
CHILD_MARGIN_S = 300.0


def print_result(result: Mapping[str, Any]) -> None:
    """Print a ``--run`` child's `result` as its result line: RESULT_MARK, then JSON."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_child(command: Sequence[str], timeout_s: float, grace_s: float = CHILD_MARGIN_S
              ) -> tuple[dict[str, Any] | None, int | None]:
    """Run a benchmark's ``--run`` child from ROOT with a clean environment.

    The child prints its result with `print_result`. On a timeout (`timeout_s`
    seconds) or Ctrl-C the child gets SIGTERM and `grace_s` more seconds (default
    CHILD_MARGIN_S) to stop what it started, then SIGKILL; Ctrl-C is raised again
    after that, a timeout is not.

    Returns:
        The object of the last result line (None if there is none), and the
        child's exit status.
    """
    process = subprocess.Popen(list(command), cwd=ROOT, env=clean_env({}),
                               stdout=subprocess.PIPE, text=True)
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except BaseException as error:  # timeout or Ctrl-C: let the child clean up first
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        if not isinstance(error, subprocess.TimeoutExpired):
            raise
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK):])
            return result, process.returncode
    return None, process.returncode


def required_env(name: str, who: str) -> str:
    """The environment variable `name`, or a RuntimeError saying `who` needs it."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"{who} needs {name} in the environment")
    return value


def plain_celery_app(name: str, redis_url: str, queue: str) -> Any:
    """A Celery app set up the way a typical app is: Redis broker and backend, JSON,
    late acks. The baseline the benchmarks compare against."""
    app = Celery(name, broker=redis_url, backend=redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
    )
    return app
