"""Performance benchmark of the whole pipeline, against a plain Celery baseline.

    python -m bench.perf [--covers 2000] [--workers 2] [--concurrency 2]
                         [--in-flight 10000] [--only PART] [--keep-logs]

Not a test and not in CI. Everything runs on loopback: a private
``redis-server`` per run (`worker.redis_server.RedisServer`), the Kie stand-in
in the driver process with no rate limit, a small HTTP server in the driver
playing the app that receives notices (``/app/cb``, answers 204), ``covers
web`` as a subprocess where callbacks are wanted, and ``--workers`` real
``celery worker`` processes of ``--concurrency`` prefork slots each. Each run is
a child process (``--run NAME``, one JSON line on stdout) that sets the
environment before it imports `tasks`, with its own fresh Redis and stand-in.

Parts (``--only`` picks one):

1. ``throughput``: covers per second through the whole pipeline
   (``enqueue_cover`` → validate → submit → track → record; callbacks to ``covers
   web``; KIE_POLL_INTERVAL 30 s (the default: callbacks end the jobs), limits
   100000/1s; covers ready at once) against `bench.plain_perf_app` (POST
   generate, GET record-info once, return the images) with the same workers.
   The queue is filled first, then the workers start; the rate is covers over
   the seconds from the first generate the stand-in accepted to the last job
   ended (ours: ``finished_at``; plain: the result's ``date_done``), and, for
   ours, to the last notice the app received (the notice is work our workers
   do per cover). Also CPU milliseconds per cover of the workers (main and pool
   processes), of redis-server and of ``covers web`` (/proc stat, counted from
   the moment the workers are seen ready), and Redis commands per cover
   (``INFO commandstats`` of the run's fresh server, enqueues included).
2. ``enqueue``: microseconds per ``enqueue_cover`` call (median, p99) against a
   bare ``.delay()`` of a trivial task of a stock Celery app on the same Redis;
   2000 calls each, in interleaved blocks of 100 so both share the noise; no
   worker runs.
3. ``latency``: milliseconds from the stand-in finishing a cover (its
   record-info ``completeTime``: accept time + cover seconds, the moment it
   sends the callback) to the job's ``finished_at`` (written by the winner in
   the same Lua script that makes ``get_cover`` say succeeded). 200 jobs at 20
   a second, covers ready after 0.5 s, COVERS_DISPATCH_INTERVAL at its default;
   10 jobs before them are measured apart (the first callbacks after ``covers
   web`` starts pay its lazy start-up).
   Once with callbacks (KIE_POLL_INTERVAL 30, so callbacks end the jobs), once
   polling only (the stand-in drops callbacks; KIE_POLL_INTERVAL 1).
4. ``calls``: generate and record-info calls per ended cover (the stand-in's
   counts) in the throughput run and in both latency runs.
5. ``scale``: ``--in-flight`` covers waiting at once (covers take 600 s,
   callbacks dropped, KIE_POLL_INTERVAL 300): enqueue them all, wait until every
   one is ``submitted``; worker RSS (main + pool processes, /proc VmRSS, sampled
   every 0.25 s) at start, after a warm-up of 50 jobs, and at its peak; Redis
   ``used_memory``; and whether anything ran twice (generate calls == covers, no
   music task paid twice, no "already generated" answer, no job with more than
   one attempt).
6. ``profile``: the throughput run of ours again, with py-spy sampling the
   driver during the enqueues (after 100 warm-up calls) and worker 0 (main and
   pool processes) during the drain; the top costs are printed under the table,
   as shares of samples and as CPU milliseconds per cover (all workers' CPU per
   cover split by worker 0's shares) or µs per enqueue. Runs before ``scale``.
   Needs ``.venv/bin/pip install py-spy``.

Worker logs go to a temp directory, removed after a clean run unless
``--keep-logs``. Workers log at WARNING, both pipelines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from bench.common import (
    ROOT,
    Workers,
    celery_ping,
    clean_env,
    positive_int,
    start_web,
    stderr,
    stop_all,
    wait_all,
)

if TYPE_CHECKING:
    from kie_covers.runtime.redis_server import RedisServer
    from kie_covers.standin import KieStandin

#: Parts, in the order they run.
PARTS = ("throughput", "enqueue", "latency", "calls", "scale", "profile")
#: The child runs each part needs (the calls part reads the throughput and latency runs).
RUNS_OF_PART: dict[str, tuple[str, ...]] = {
    "throughput": ("throughput-ours", "throughput-plain"),
    "enqueue": ("enqueue",),
    "latency": ("latency-callback", "latency-polling"),
    "calls": ("throughput-ours", "latency-callback", "latency-polling"),
    "scale": ("scale",),
    "profile": ("profile",),
}
#: The runs in the order they go: the scale run last, as stopping its stand-in wakes
#: --in-flight timer threads at once and the load average stays up for a while.
RUNS = ("throughput-ours", "throughput-plain", "enqueue", "latency-callback",
        "latency-polling", "profile", "scale")

#: Prefix of a child's result line on stdout.
RESULT_MARK = "PERF-RESULT "
#: Celery queue of our workers, and of the plain ones.
QUEUE_OURS = "perf-ours"
QUEUE_PLAIN = "plain-perf"
#: Stand-in credits: enough that no run ever hits 402.
CREDITS = 1e9
#: Limits for both limiters: high enough never to bind.
NO_LIMIT = "100000/1s"
#: Seconds the latency runs' covers take in the stand-in.
LATENCY_COVER_S = 0.5
#: Jobs per latency run, and how many are enqueued per second; jobs measured apart
#: before them (the first callbacks after ``covers web`` starts pay its start-up).
LATENCY_JOBS = 200
LATENCY_WARMUP_JOBS = 10
LATENCY_PACE_PER_S = 20.0
#: KIE_POLL_INTERVAL (s) of the throughput run: the default, as callbacks are on and
#: end the jobs (polls are the fallback for a lost callback, none are lost here).
THROUGHPUT_POLL_S = 30.0
#: KIE_POLL_INTERVAL (s) of the latency runs: with callbacks, and polling only.
LATENCY_POLL_CALLBACKS_S = 30.0
LATENCY_POLL_ONLY_S = 1.0
#: Calls per pipeline in the enqueue part, calls per block, warm-up calls each.
ENQUEUE_CALLS = 2000
ENQUEUE_BLOCK = 100
ENQUEUE_WARMUP = 100
#: Scale part: cover seconds, KIE_POLL_INTERVAL (s), warm-up jobs before the "warm" RSS.
SCALE_COVER_S = 600.0
SCALE_POLL_S = 300.0
SCALE_WARM_JOBS = 50
#: Seconds between RSS samples.
RSS_SAMPLE_S = 0.25
#: Thread stack size (bytes) in the scale run: the stand-in keeps one timer thread per
#: cover, and --in-flight of them must fit.
SCALE_STACK_BYTES = 512 * 1024
#: py-spy samples per second, and the longest it records, in seconds.
PROFILE_RATE_HZ = 100
PROFILE_MAX_S = 60.0
#: Seconds a run waits for its jobs (and notices) before it gives up.
WAIT_TIMEOUT_S = 600.0
#: Seconds the parent gives a child run.
CHILD_TIMEOUT_S = 1500.0
#: Redis commands listed per pipeline in the throughput part.
REDIS_TOP = 8
#: Targets.
THROUGHPUT_RATIO_MIN = 0.8
ENQUEUE_RATIO_MAX = 2.0
CALLBACK_P99_MAX_MS = 100.0
RSS_GROWTH_MAX_MB = 50.0
#: Directories holding the product's code (profile frames from these are "ours").
PRODUCT_DIRS = tuple(str(ROOT / name) + os.sep for name in (
    "core", "config", "store", "runtime", "services", "tasks", "worker", "kie_covers"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- processes: CPU and memory from /proc --------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads'), from /proc; [] if it is gone."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
    return found


def with_children(pids: Sequence[int]) -> list[int]:
    """`pids` and their direct children (a worker's pool processes)."""
    return [p for pid in pids for p in (pid, *children_of(pid))]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` used so far; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of `pid` in MB (2**20 bytes); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def rss_by_process(mains: Sequence[int]) -> dict[str, float]:
    """RSS (MB) of each worker's main process and pool processes, summed per kind:
    ``{"main": MB, "pool": MB}``."""
    found = {"main": 0.0, "pool": 0.0}
    for pid in mains:
        found["main"] += rss_mb(pid)
        found["pool"] += sum(rss_mb(child) for child in children_of(pid))
    return found


class RssSampler:
    """Samples the summed RSS (MB) of some processes and their children in a thread.

    Args:
        pids: the main processes (their children are found at each sample).
        every_s: seconds between samples.
    """

    def __init__(self, pids: Sequence[int], every_s: float = RSS_SAMPLE_S) -> None:
        self.pids = list(pids)
        self.every_s = every_s
        self.peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def now_mb(self) -> float:
        """The summed RSS right now, in MB."""
        return sum(rss_mb(p) for p in with_children(self.pids))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            self.samples += 1
            self._stop.wait(self.every_s)

    def start(self) -> RssSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling (after one last sample); returns the peak in MB."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_mb = max(self.peak_mb, self.now_mb())
        return self.peak_mb


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


def set_environ(settings: dict[str, str]) -> dict[str, str]:
    """Make this process's environment `clean_env(settings)`; returns it."""
    env = clean_env(settings)
    os.environ.clear()
    os.environ.update(env)
    return env



@contextlib.contextmanager
def stage(name: str, cover_s: float, settings: dict[str, str], web: bool,
          keep_logs: bool) -> Iterator[Stage]:
    """Start a fresh Redis, stand-in and app sink (and ``covers web`` if `web`).

    Sets this process's environment to `settings` plus REDIS_URL, KIE_BASE_URL,
    KIE_API_KEY (and COVERS_CALLBACK_URL with `web`) before anything imports
    `tasks`. Stops everything on the way out; the logs are removed unless
    `keep_logs` or an error.

    Args:
        name: names the temp directory.
        cover_s: seconds a cover takes in the stand-in.
    """
    from kie_covers.runtime.redis_server import RedisServer, free_port
    from kie_covers.standin import KieStandin, StandinConfig

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
    """Our workers' settings: no binding limit, queue QUEUE_OURS, the given intervals (s)."""
    settings = {"KIE_RATE_LIMIT": NO_LIMIT, "KIE_STATUS_RATE_LIMIT": NO_LIMIT,
                "KIE_POLL_INTERVAL": f"{poll_s:g}", "COVERS_QUEUE": QUEUE_OURS,
                "COVERS_LOG_LEVEL": "WARNING", "PLAIN_QUEUE": QUEUE_PLAIN}
    if dispatch_s is not None:
        settings["COVERS_DISPATCH_INTERVAL"] = f"{dispatch_s:g}"
    return settings


def start_ours(st: Stage, workers: int, concurrency: int) -> Workers:
    """Start our workers on `st` and wait until they take tasks."""
    from kie_covers.runtime.app import app

    pool = Workers("kie_covers.worker", QUEUE_OURS, workers, st.env, st.log_dir,
                   concurrency=concurrency)
    try:
        pool.start(lambda: celery_ping(app))
    except BaseException:
        pool.stop()
        raise
    return pool


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05
             ) -> bool:
    """Poll `predicate` until it holds (True) or `timeout_s` seconds pass (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def read_jobs(job_ids: Sequence[str]) -> list[Any]:
    """The `tasks.jobs.Job` of each id (None when missing), read in pipelined batches."""
    from kie_covers.config import keys
    from kie_covers.runtime.connections import get_store
    from kie_covers.store.jobs import Job

    client = get_store().redis
    jobs: list[Any] = []
    for start in range(0, len(job_ids), 1000):
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids[start:start + 1000]:
            pipe.hgetall(keys.job(job_id))
        jobs.extend(Job.from_hash(raw) if raw.get("job_id") else None
                    for raw in pipe.execute())
    return jobs


def redis_commands(url: str) -> dict[str, int]:
    """Calls per Redis command since the server started (``INFO commandstats``)."""
    import redis

    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def wall_offset_s() -> float:
    """time.time() - time.monotonic(): turns the stand-in's monotonic times to wall time."""
    return time.time() - time.monotonic()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..1) of `values`; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- py-spy ----------------------------------------------------------------------------


def py_spy_path() -> str | None:
    """The py-spy binary beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpy:
    """``py-spy record`` of a running process, stopped with SIGINT; raw collapsed stacks.

    Args:
        pid: the process to sample.
        out: where the raw (collapsed) stacks go.
        subprocesses: sample its child processes too.
    """

    def __init__(self, pid: int, out: Path, subprocesses: bool = False) -> None:
        binary = py_spy_path()
        if binary is None:
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
        self.out = out
        command = [binary, "record", "--pid", str(pid), "--format", "raw", "--nolineno",
                   "--full-filenames", "--rate", str(PROFILE_RATE_HZ),
                   "--duration", str(int(PROFILE_MAX_S)), "-o", str(out)]
        if subprocesses:
            command.append("--subprocesses")
        self._log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # attach before the work starts

    def stop(self) -> list[tuple[list[str], int]]:
        """Stop sampling; returns (frames root first, samples) per distinct stack."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        stacks: list[tuple[list[str], int]] = []
        if self.out.exists():
            for line in self.out.read_text(errors="replace").splitlines():
                frames, _, count = line.rpartition(" ")
                if frames and count.isdigit():
                    stacks.append((frames.split(";"), int(count)))
        return stacks


def _frame_parts(frame: str) -> tuple[str, str]:
    """``"func (path)"`` -> (func, path)."""
    name, _, path = frame.rpartition(" (")
    return (name, path[:-1]) if name else (frame, "")


def _short(frame: str) -> str:
    """``func (/work/main/tasks/jobs.py)`` -> ``tasks/jobs.py:func``; library frames as
    ``package/module.py:func``."""
    name, path = _frame_parts(frame)
    if "site-packages" + os.sep in path:
        return f"{path.split('site-packages' + os.sep, 1)[1]}:{name}"
    if path.startswith(str(ROOT) + os.sep):
        return f"{path[len(str(ROOT)) + 1:]}:{name}"
    if "python3" in path:
        return f"{path.rsplit(os.sep, 1)[-1]}:{name}"
    return f"{path}:{name}"


def _is_product(frame: str) -> bool:
    return _frame_parts(frame)[1].startswith(PRODUCT_DIRS)


#: Library packages below celery whose frames say what celery had them do.
UNDER_CELERY = ("kombu", "billiard", "requests", "marshmallow")


def _package(frame: str) -> str | None:
    """The site-packages package a frame is from (None for the stdlib and the product)."""
    path = _frame_parts(frame)[1]
    marker = "site-packages" + os.sep
    return path.split(marker, 1)[1].split(os.sep, 1)[0] if marker in path else None


def _landmark(frames: Sequence[str]) -> str | None:
    """What the libraries were doing: "deepest celery frame > deepest kombu (or billiard,
    requests, marshmallow) frame below it", either part alone if the other is missing,
    else the deepest redis frame; shortened."""
    packages = [_package(f) for f in frames]
    celery_at = max((i for i, p in enumerate(packages) if p == "celery"), default=-1)
    under_at = max((i for i, p in enumerate(packages) if p in UNDER_CELERY and i > celery_at),
                   default=None)
    parts = [_short(frames[i]) for i in (celery_at, under_at) if i is not None and i >= 0]
    if parts:
        return " > ".join(parts)
    redis_at = max((i for i, p in enumerate(packages) if p == "redis"), default=None)
    return _short(frames[redis_at]) if redis_at is not None else None


def _role(process_frames: Sequence[str], frames: Sequence[str]) -> str:
    """What a sampled stack was: a pool process, or which thread of a worker's main process."""
    if len(process_frames) > 1:
        return "pool process"
    if any(f.startswith("DueDispatcher.") for f in frames):
        return "main process: due dispatcher thread"
    if any(f.startswith("Thread._bootstrap") for f in frames):
        return "main process: other threads"
    return "main process: consumer (main thread)"


def summarize_profile(stacks: list[tuple[list[str], int]], top: int = 12,
                      root_filter: str | None = None) -> dict[str, Any]:
    """Where the samples went.

    Args:
        stacks: from `PySpy.stop` (recorded with ``--subprocesses`` or not).
        top: rows per list.
        root_filter: keep only stacks with a frame whose function name is this
            (e.g. ``enqueue_cover``), and count from that frame down.

    Returns:
        ``samples``; and lists of [label, share of samples]: ``roles`` (pool process,
        or which thread of the main process); ``boundary``: "role | deepest product
        frame -> what it called" (``(self)`` when the product frame itself ran), or
        "role | (no product frame) <landmark>"; ``landmarks``: "role | <landmark>",
        what the libraries were doing below the deepest product frame (see
        `_landmark`); ``inclusive``: product functions on the stack.
    """
    total = 0
    counters: dict[str, Counter[str]] = {name: Counter() for name in
                                         ("roles", "boundary", "landmarks", "inclusive")}
    for all_frames, count in stacks:
        process_frames = [f for f in all_frames if f.startswith("process ")]
        frames = [f for f in all_frames if not f.startswith("process ")]
        if root_filter is not None:
            at = next((i for i, f in enumerate(frames)
                       if _frame_parts(f)[0] == root_filter), None)
            if at is None:
                continue
            frames = frames[at:]
        total += count
        role = _role(process_frames, frames) if process_frames else ""
        prefix = f"{role} | " if role else ""
        counters["roles"][role or "all"] += count
        deepest = max((i for i, f in enumerate(frames) if _is_product(f)), default=None)
        # Below the deepest product frame: what the product had the libraries do.
        landmark = _landmark(frames if deepest is None else frames[deepest + 1:])
        if deepest is None:
            where = landmark or " > ".join(_short(f) for f in frames[-2:])
            counters["boundary"][f"{prefix}(no product frame) {where}"] += count
        else:
            callee = _short(frames[deepest + 1]) if deepest + 1 < len(frames) else "(self)"
            counters["boundary"][f"{prefix}{_short(frames[deepest])} -> {callee}"] += count
        if landmark is None:
            landmark = "(no library frame) " + (_short(frames[-1]) if frames else "?")
        counters["landmarks"][prefix + landmark] += count
        for name in {_short(f) for f in frames if _is_product(f)}:
            counters["inclusive"][name] += count

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return [[label, n / total] for label, n in counter.most_common(top)] if total else []

    return {"samples": total, **{name: shares(c) for name, c in counters.items()}}


# -- part 1: throughput (and the profile) ---------------------------------------------


def run_throughput_ours(covers: int, workers: int, concurrency: int, keep_logs: bool,
                        profile: bool = False) -> dict[str, Any]:
    """Fill the queue with `covers` jobs, start our workers, time the drain.

    With `profile`, py-spy samples this process during the enqueues and worker 0
    (with its pool) during the drain.
    """
    name = "profile" if profile else "throughput-ours"
    with stage(name, 0.0, ours_settings(THROUGHPUT_POLL_S, None), web=True,
               keep_logs=keep_logs) as st:
        from kie_covers import enqueue_cover, get_cover
        from kie_covers.runtime.connections import get_redis

        offset = wall_offset_s()
        music = [uuid.uuid4().hex for _ in range(covers)]
        stderr(f"{name}: enqueuing {covers} covers (no worker yet)")
        # Connections, script loads, compiled regexes: not what a call costs.
        warm = min(ENQUEUE_WARMUP, covers // 10)
        ids = [enqueue_cover(m, st.sink.url) for m in music[:warm]]
        spy = PySpy(os.getpid(), st.log_dir / "enqueue.raw") if profile else None
        started = time.perf_counter()
        ids.extend(enqueue_cover(m, st.sink.url) for m in music[warm:])
        enqueue_s = time.perf_counter() - started
        enqueue_stacks = spy.stop() if spy is not None else []
        get_redis().ping()
        stderr(f"{name}: starting {workers} workers x {concurrency}")
        pool = start_ours(st, workers, concurrency)
        try:
            mains = [p.pid for p in pool.processes]
            worker_pids = with_children(mains)
            assert st.web is not None
            others = {"redis": st.redis_pid, "web": st.web.pid}
            cpu0 = {pid: cpu_s(pid) for pid in [*worker_pids, *others.values()]}
            generated0 = len(st.standin.generate_times())
            spy = PySpy(mains[0], st.log_dir / "worker.raw", subprocesses=True) \
                if profile else None
            # Worker 0 is profiled; its shares are applied to the CPU of all workers
            # per cover (the workers are alike), measured over the same span.
            spy_pids = worker_pids
            spy_cpu0 = sum(cpu_s(p) for p in spy_pids)
            spy_jobs0 = len(st.standin.generate_times())

            def ended(job_id: str) -> bool:
                return get_cover(job_id)["state"] in ("succeeded", "failed")

            _, pending = wait_all(ended, ids, WAIT_TIMEOUT_S)
            wait_for(lambda: st.sink.notices >= covers, 60.0)
            spy_jobs1 = len(st.standin.generate_times())
            spy_cpu1 = sum(cpu_s(p) for p in spy_pids)
            worker_stacks = spy.stop() if spy is not None else []
            cpu1 = {pid: cpu_s(pid) for pid in cpu0}
        finally:
            pool.stop()
        counts, answers = st.standin.counts(), st.standin.answers()
        commands = redis_commands(st.redis.url)
        paid = st.standin.paid()
        first_generate = st.standin.generate_times()[0] + offset
        jobs = read_jobs(ids)
        notices = st.sink.notices
    states = Counter(j.state.value if j else "missing" for j in jobs)
    finished = [j.finished_at for j in jobs if j and j.finished_at]
    notified = [j.notified_at for j in jobs if j and j.notified_at]
    worker_cpu = sum(cpu1[p] - cpu0[p] for p in worker_pids)
    # CPU is counted from the moment the workers were seen ready; they may have done
    # some covers before that, so it is divided by the covers generated since.
    measured = max(1, covers - generated0)
    result: dict[str, Any] = {
        "covers": covers, "succeeded": states["succeeded"], "failed": states["failed"],
        "unfinished": len(pending), "notices": notices, "enqueue_s": enqueue_s,
        "seconds_ended": max(finished) - first_generate if finished else None,
        "seconds_notified": max(notified) - first_generate if len(notified) == covers
        else None,
        "cpu_covers": measured,
        "cpu_ms_workers": 1000 * worker_cpu / measured,
        "cpu_ms_redis": 1000 * (cpu1[others["redis"]] - cpu0[others["redis"]]) / measured,
        "cpu_ms_web": 1000 * (cpu1[others["web"]] - cpu0[others["web"]]) / measured,
        "generate_calls": counts["generate"], "record_info_calls": counts["record-info"],
        "answers": answers, "paid_twice": sum(1 for n in paid.values() if n > 1),
        "polls": sum(j.polls for j in jobs if j), "attempts": sum(j.attempts for j in jobs if j),
        "redis_commands": commands,
    }
    if profile:
        per_cover_ms = 1000 * (spy_cpu1 - spy_cpu0) / max(1, spy_jobs1 - spy_jobs0)
        result["profile"] = {
            "enqueue": summarize_profile(enqueue_stacks, root_filter="enqueue_cover"),
            "enqueue_us": 1e6 * enqueue_s / max(1, covers - warm),
            "worker": summarize_profile(worker_stacks),
            "worker_cpu_ms_per_cover": per_cover_ms,
        }
    return result


def run_throughput_plain(covers: int, workers: int, concurrency: int,
                         keep_logs: bool) -> dict[str, Any]:
    """Fill the queue with `covers` plain tasks, start plain workers, time the drain."""
    from datetime import UTC, datetime

    with stage("throughput-plain", 0.0, {"PLAIN_QUEUE": QUEUE_PLAIN}, web=False,
               keep_logs=keep_logs) as st:
        from bench import plain_perf_app

        offset = wall_offset_s()
        stderr(f"throughput-plain: enqueuing {covers} covers (no worker yet)")
        results = [plain_perf_app.cover.delay(uuid.uuid4().hex, st.sink.url)
                   for _ in range(covers)]
        stderr(f"throughput-plain: starting {workers} workers x {concurrency}")
        pool = Workers("bench.plain_perf_app", QUEUE_PLAIN, workers, st.env, st.log_dir,
                       concurrency=concurrency)
        try:
            pool.start(lambda: celery_ping(plain_perf_app.app))
            worker_pids = with_children([p.pid for p in pool.processes])
            redis_pid = st.redis_pid
            cpu0 = {pid: cpu_s(pid) for pid in [*worker_pids, redis_pid]}
            generated0 = len(st.standin.generate_times())
            by_id = {r.id: r for r in results}
            _, pending = wait_all(lambda task_id: bool(by_id[task_id].ready()), list(by_id),
                                  WAIT_TIMEOUT_S)
            cpu1 = {pid: cpu_s(pid) for pid in cpu0}
        finally:
            pool.stop()
        counts = st.standin.counts()
        commands = redis_commands(st.redis.url)
        first_generate = st.standin.generate_times()[0] + offset
        states = Counter(r.state for r in results)
        done: list[float] = []
        for r in results:
            when = r.date_done
            if isinstance(when, str):
                when = datetime.fromisoformat(when)
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                done.append(when.timestamp())
        with_images = sum(1 for r in results if r.successful() and r.result)
    worker_cpu = sum(cpu1[p] - cpu0[p] for p in worker_pids)
    measured = max(1, covers - generated0)  # as in run_throughput_ours
    return {
        "covers": covers, "succeeded": states["SUCCESS"], "failed": states["FAILURE"],
        "unfinished": len(pending), "with_images": with_images,
        "seconds_ended": max(done) - first_generate if done else None,
        "cpu_covers": measured,
        "cpu_ms_workers": 1000 * worker_cpu / measured,
        "cpu_ms_redis": 1000 * (cpu1[redis_pid] - cpu0[redis_pid]) / measured,
        "generate_calls": counts["generate"], "record_info_calls": counts["record-info"],
        "redis_commands": commands,
    }


# -- part 2: enqueue cost ---------------------------------------------------------------


def run_enqueue(keep_logs: bool) -> dict[str, Any]:
    """Time `enqueue_cover` and a bare ``.delay()`` call by call, interleaved in blocks."""
    with stage("enqueue", 0.0, ours_settings(30.0, None), web=False, keep_logs=keep_logs) as st:
        from bench import plain_perf_app
        from kie_covers import enqueue_cover

        url = st.sink.url
        music = iter([uuid.uuid4().hex for _ in range(ENQUEUE_CALLS + ENQUEUE_WARMUP)])
        noop = plain_perf_app.noop

        def ours() -> None:
            enqueue_cover(next(music), url)

        def bare() -> None:
            noop.delay()

        for _ in range(ENQUEUE_WARMUP):
            ours()
            bare()
        timings: dict[str, list[int]] = {"ours": [], "bare": []}
        calls: dict[str, Callable[[], None]] = {"ours": ours, "bare": bare}
        stderr(f"enqueue: {ENQUEUE_CALLS} calls each, blocks of {ENQUEUE_BLOCK}")
        clock = time.perf_counter_ns
        for block in range(ENQUEUE_CALLS // ENQUEUE_BLOCK):
            order = ("ours", "bare") if block % 2 == 0 else ("bare", "ours")
            for name in order:
                call, sink = calls[name], timings[name]
                for _ in range(ENQUEUE_BLOCK):
                    t0 = clock()
                    call()
                    sink.append(clock() - t0)
    return {name: {"median_us": statistics.median(ns) / 1000,
                   "p99_us": percentile(ns, 0.99) / 1000,
                   "mean_us": statistics.fmean(ns) / 1000, "calls": len(ns)}
            for name, ns in timings.items()}


# -- part 3 (and 4): completion latency ---------------------------------------------------


def run_latency(mode: str, workers: int, concurrency: int, keep_logs: bool) -> dict[str, Any]:
    """`LATENCY_JOBS` jobs at `LATENCY_PACE_PER_S`; stand-in completion -> ``finished_at``.

    First `LATENCY_WARMUP_JOBS` jobs (same pace) are done and measured apart: the
    first callbacks after ``covers web`` starts pay its lazy start-up.

    Args:
        mode: ``callback`` (callbacks end the jobs) or ``polling`` (callbacks dropped).
    """
    import requests

    poll_s = LATENCY_POLL_CALLBACKS_S if mode == "callback" else LATENCY_POLL_ONLY_S
    name = f"latency-{mode}"
    with stage(name, LATENCY_COVER_S, ours_settings(poll_s, None), web=True,
               keep_logs=keep_logs) as st:
        from kie_covers import enqueue_cover, get_cover

        if mode == "polling":
            st.standin.set_callback_mode("drop")

        def ended(job_id: str) -> bool:
            return get_cover(job_id)["state"] in ("succeeded", "failed")

        def paced(count: int) -> tuple[list[str], list[str]]:
            """Enqueue `count` jobs at the pace; wait for them and their notices.

            Returns their ids and the ids that never ended."""
            ids: list[str] = []
            notices = st.sink.notices + count
            begin = time.monotonic()
            for i in range(count):
                time.sleep(max(0.0, begin + i / LATENCY_PACE_PER_S - time.monotonic()))
                ids.append(enqueue_cover(uuid.uuid4().hex, st.sink.url))
            _, pending = wait_all(ended, ids, WAIT_TIMEOUT_S, interval_s=0.05)
            wait_for(lambda: st.sink.notices >= notices, 30.0)
            return ids, pending

        pool = start_ours(st, workers, concurrency)
        try:
            stderr(f"{name}: {LATENCY_WARMUP_JOBS} warm-up jobs, then {LATENCY_JOBS} jobs "
                   f"at {LATENCY_PACE_PER_S:g}/s")
            warm_ids, warm_pending = paced(LATENCY_WARMUP_JOBS)
            ids, pending = paced(LATENCY_JOBS)
        finally:
            pool.stop()
        counts = st.standin.counts()
        warm_jobs, jobs = read_jobs(warm_ids), read_jobs(ids)
        # Only now (the counts are read): when the stand-in finished each cover.
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {st.api_key}"

        def latencies_ms(of: list[Any]) -> list[float]:
            found: list[float] = []
            for job in of:
                if job is None or not job.cover_task_id or job.finished_at is None:
                    continue
                answer = session.get(f"{st.standin.base_url}/api/v1/suno/cover/record-info",
                                     params={"taskId": job.cover_task_id}, timeout=10)
                complete_ms = answer.json()["data"]["completeTime"]
                found.append(job.finished_at * 1000 - complete_ms)
            return found

        warm_ms, main_ms = latencies_ms(warm_jobs), latencies_ms(jobs)
    everything = warm_jobs + jobs
    states = Counter(j.state.value if j else "missing" for j in everything)
    return {
        "jobs": len(ids), "warmup_jobs": len(warm_ids), "succeeded": states["succeeded"],
        "failed": states["failed"], "unfinished": len(pending) + len(warm_pending),
        "poll_interval_s": poll_s,
        "median_ms": statistics.median(main_ms) if main_ms else math.nan,
        "p99_ms": percentile(main_ms, 0.99), "max_ms": max(main_ms, default=math.nan),
        "min_ms": min(main_ms, default=math.nan),
        "warmup_max_ms": max(warm_ms, default=math.nan),
        "warmup_median_ms": statistics.median(warm_ms) if warm_ms else math.nan,
        "ended_by_poll": sum(1 for j in jobs if j and j.polls > 0),
        "generate_calls": counts["generate"], "record_info_calls": counts["record-info"],
    }


# -- part 5: many covers in flight --------------------------------------------------------


def run_scale(in_flight: int, workers: int, concurrency: int, keep_logs: bool
              ) -> dict[str, Any]:
    """`in_flight` covers waiting at once: worker RSS, Redis memory, nothing twice."""
    threading.stack_size(SCALE_STACK_BYTES)
    with stage("scale", SCALE_COVER_S, ours_settings(SCALE_POLL_S, None), web=False,
               keep_logs=keep_logs) as st:
        from kie_covers import enqueue_cover
        from kie_covers.config import keys
        from kie_covers.runtime.connections import get_redis

        st.standin.set_callback_mode("drop")
        redis_client = get_redis()
        pool = start_ours(st, workers, concurrency)
        try:
            mains = [p.pid for p in pool.processes]
            sampler = RssSampler(mains)
            time.sleep(1.0)
            rss_start = sampler.now_mb()
            by_process_start = rss_by_process(mains)
            memory_start = int(redis_client.info("memory")["used_memory"])
            sampler.start()
            music = [uuid.uuid4().hex for _ in range(in_flight)]
            warm = min(SCALE_WARM_JOBS, in_flight)
            ids = [enqueue_cover(m, st.sink.url) for m in music[:warm]]
            wait_for(lambda: len(st.standin.generate_times()) >= warm, 60.0)
            time.sleep(1.0)
            rss_warm = sampler.now_mb()
            by_process_warm = rss_by_process(mains)
            stderr(f"scale: enqueuing {in_flight - warm} more covers")
            started = time.monotonic()
            ids.extend(enqueue_cover(m, st.sink.url) for m in music[warm:])
            enqueue_s = time.monotonic() - started
            stderr(f"scale: enqueued in {enqueue_s:.1f}s; waiting until all are submitted")
            wait_for(lambda: len(st.standin.generate_times()) >= in_flight, WAIT_TIMEOUT_S,
                     interval_s=0.25)

            def submitted(job_id: str) -> bool:
                return redis_client.hget(keys.job(job_id), "state") == "submitted"

            _, pending = wait_all(submitted, ids, 120.0)
            submitted_s = time.monotonic() - started
            time.sleep(2.0)  # anything that would run twice has its chance
            rss_peak = sampler.stop()
            rss_end = sampler.now_mb()
            by_process_end = rss_by_process(mains)
            memory_end = int(redis_client.info("memory")["used_memory"])
        finally:
            pool.stop()
        counts, answers, paid = st.standin.counts(), st.standin.answers(), st.standin.paid()
        jobs = read_jobs(ids)
    states = Counter(j.state.value if j else "missing" for j in jobs)
    return {
        "covers": in_flight, "states": dict(states), "not_submitted": len(pending),
        "enqueue_s": enqueue_s, "enqueue_us_per_call": 1e6 * enqueue_s / max(1, in_flight - warm),
        "submitted_s": submitted_s, "rss_start_mb": rss_start, "rss_warm_mb": rss_warm,
        "rss_peak_mb": rss_peak, "rss_end_mb": rss_end, "rss_samples": sampler.samples,
        "rss_by_process": {role: [by_process_start.get(role, 0.0),
                                  by_process_warm.get(role, 0.0), mb]
                           for role, mb in by_process_end.items()},
        "redis_start_mb": memory_start / 2**20, "redis_end_mb": memory_end / 2**20,
        "redis_bytes_per_job": (memory_end - memory_start) / in_flight,
        "generate_calls": counts["generate"], "generate_400": answers.get("generate:400", 0),
        "paid_twice": sum(1 for n in paid.values() if n > 1),
        "attempts_over_1": sum(1 for j in jobs if j and j.attempts > 1),
    }


# -- child process ------------------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    """``--run NAME``: one run; prints its result as one JSON line."""

    def on_stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    load = os.getloadavg()[0]
    run: str = args.run
    try:
        if run == "throughput-ours":
            result = run_throughput_ours(args.covers, args.workers, args.concurrency,
                                         args.keep_logs)
        elif run == "profile":
            result = run_throughput_ours(args.covers, args.workers, args.concurrency,
                                         args.keep_logs, profile=True)
        elif run == "throughput-plain":
            result = run_throughput_plain(args.covers, args.workers, args.concurrency,
                                          args.keep_logs)
        elif run == "enqueue":
            result = run_enqueue(args.keep_logs)
        elif run.startswith("latency-"):
            result = run_latency(run.removeprefix("latency-"), args.workers, args.concurrency,
                                 args.keep_logs)
        else:
            result = run_scale(args.in_flight, args.workers, args.concurrency, args.keep_logs)
    except BaseException as error:
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"[:2000]}
    result["load_before"] = load
    result["load_after"] = os.getloadavg()[0]
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 1 if "error" in result else 0


def spawn(run: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run `run` in a child process; its result dict (with ``error`` if it broke)."""
    command = [sys.executable, "-m", "bench.perf", "--run", run, "--covers", str(args.covers),
               "--workers", str(args.workers), "--concurrency", str(args.concurrency),
               "--in-flight", str(args.in_flight)]
    if args.keep_logs:
        command.append("--keep-logs")
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=clean_env({}), stdout=subprocess.PIPE,
                               text=True)
    try:
        out, _ = process.communicate(timeout=CHILD_TIMEOUT_S)
    except BaseException as error:  # timeout or Ctrl-C: let the child clean up first
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        if not isinstance(error, subprocess.TimeoutExpired):
            raise
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK):])
            result["wall_s"] = time.monotonic() - started
            return result
    return {"error": f"child exited with {process.returncode} and no result"}


# -- the table ----------------------------------------------------------------------------


@dataclass
class Table:
    """Rows of the one table: part, measure, ours, baseline, ratio, target, met."""

    rows: list[list[str]] = field(default_factory=list)

    def add(self, part: str, measure: str, ours: str, baseline: str = "", ratio: str = "",
            target: str = "", met: bool | None = None) -> None:
        """One row; `met` None leaves the column empty."""
        verdict = "" if met is None else ("yes" if met else "NO")
        self.rows.append([part, measure, ours, baseline, ratio, target, verdict])

    def render(self) -> str:
        """The table as text."""
        from kie_covers.worker.table import render

        return render(["part", "measure", "ours", "baseline", "ours/baseline", "target",
                       "met"], self.rows)


def _f(value: Any, digits: int = 1) -> str:
    """A number with `digits` decimals, or ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _rate(result: dict[str, Any], key: str) -> float | None:
    seconds = result.get(key)
    return result["covers"] / seconds if seconds else None


def table_throughput(table: Table, ours: dict[str, Any], plain: dict[str, Any]) -> None:
    """Part 1 rows."""
    part = "1 throughput"
    if "error" in ours or "error" in plain:
        table.add(part, "error (see below)", "", "")
        return
    plain_rate = _rate(plain, "seconds_ended")
    for key, label in (("seconds_ended", "covers/s, first generate -> last job ended"),
                       ("seconds_notified", "covers/s, ... -> last app notice (ours)")):
        rate = _rate(ours, key)
        ratio = rate / plain_rate if rate and plain_rate else None
        table.add(part, label, _f(rate), _f(plain_rate), _f(ratio, 2),
                  f">= {THROUGHPUT_RATIO_MIN:g}", None if ratio is None
                  else ratio >= THROUGHPUT_RATIO_MIN)
    for key, label in (("cpu_ms_workers", "CPU ms/cover, workers (main + pool)"),
                       ("cpu_ms_redis", "CPU ms/cover, redis-server")):
        ratio = ours[key] / plain[key] if plain[key] else None
        table.add(part, label, _f(ours[key], 2), _f(plain[key], 2), _f(ratio, 2))
    table.add(part, "CPU ms/cover, covers web", _f(ours["cpu_ms_web"], 2), "-")
    per_cover = [sum(r["redis_commands"].values()) / r["covers"] for r in (ours, plain)]
    table.add(part, "Redis commands per cover (enqueue included)", _f(per_cover[0]),
              _f(per_cover[1]), _f(per_cover[0] / per_cover[1], 2))
    for label, r in (("ours", ours), ("plain", plain)):
        top = Counter(r["redis_commands"]).most_common(REDIS_TOP)
        table.add(part, f"  top Redis commands per cover, {label}",
                  ", ".join(f"{name} {n / r['covers']:.1f}" for name, n in top))
    table.add(part, "succeeded / failed / unfinished",
              f"{ours['succeeded']}/{ours['failed']}/{ours['unfinished']}",
              f"{plain['succeeded']}/{plain['failed']}/{plain['unfinished']}")


def table_enqueue(table: Table, result: dict[str, Any]) -> None:
    """Part 2 rows."""
    part = "2 enqueue"
    if "error" in result:
        table.add(part, "error (see below)", "")
        return
    ours, bare = result["ours"], result["bare"]
    for key, label in (("median_us", "µs per call, median"), ("p99_us", "µs per call, p99")):
        ratio = ours[key] / bare[key]
        table.add(part, label + " (vs bare .delay)", _f(ours[key], 0), _f(bare[key], 0),
                  _f(ratio, 2), f"<= {ENQUEUE_RATIO_MAX:g}x",
                  ratio <= ENQUEUE_RATIO_MAX if key == "median_us" else None)


def table_latency(table: Table, callback: dict[str, Any], polling: dict[str, Any]) -> None:
    """Part 3 rows."""
    part = "3 latency"
    for result, label in ((callback, "callbacks"), (polling, "polling only")):
        if "error" in result:
            table.add(part, f"{label}: error (see below)", "")
            continue
        where = (f"{label} (poll {result['poll_interval_s']:g}s), "
                 "cover done -> finished_at, ms")
        table.add(part, f"{where}: median", _f(result["median_ms"]))
        is_callbacks = result is callback
        table.add(part, f"{where}: p99", _f(result["p99_ms"]), "", "",
                  f"< {CALLBACK_P99_MAX_MS:g}" if is_callbacks else "",
                  result["p99_ms"] < CALLBACK_P99_MAX_MS if is_callbacks else None)
        table.add(part, f"{where}: max; jobs ended by a poll",
                  f"{_f(result['max_ms'])}; {result['ended_by_poll']}/{result['jobs']}")
        table.add(part, f"{label}: first {result['warmup_jobs']} jobs after start "
                  "(apart), median / max ms",
                  f"{_f(result['warmup_median_ms'])} / {_f(result['warmup_max_ms'])}")


def table_calls(table: Table, runs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Part 4 rows: calls per ended cover."""
    part = "4 API calls"
    for label, result in runs:
        if "error" in result:
            table.add(part, f"{label}: error (see below)", "")
            continue
        ended = result.get("succeeded", 0) + result.get("failed", 0) or 1
        generates = result["generate_calls"] / ended
        polls = result["record_info_calls"] / ended
        table.add(part, f"{label}: generate per cover", _f(generates, 3), "", "", "= 1",
                  result["generate_calls"] == ended)
        callbacks = "callbacks" in label
        table.add(part, f"{label}: record-info per cover", _f(polls, 3), "", "",
                  "<= 1" if callbacks else "", polls <= 1 if callbacks else None)


def table_scale(table: Table, result: dict[str, Any]) -> None:
    """Part 5 rows."""
    part = "5 in flight"
    if "error" in result:
        table.add(part, "error (see below)", "")
        return
    n = result["covers"]
    table.add(part, f"covers in flight (all submitted: {n - result['not_submitted']})", str(n))
    table.add(part, "enqueue time, s (µs per call)",
              f"{_f(result['enqueue_s'])} ({_f(result['enqueue_us_per_call'], 0)})")
    table.add(part, "from first enqueue to all submitted, s", _f(result["submitted_s"]))
    table.add(part, "worker RSS MB: start / warm / peak / end",
              " / ".join(_f(result[k]) for k in ("rss_start_mb", "rss_warm_mb", "rss_peak_mb",
                                                   "rss_end_mb")))
    kinds = result["rss_by_process"]
    table.add(part, "worker RSS MB by kind, start / warm / end",
              ", ".join(f"{kind} " + " / ".join(_f(mb) for mb in values)
                        for kind, values in kinds.items()))
    growth = result["rss_peak_mb"] - result["rss_start_mb"]
    table.add(part, "worker RSS growth, peak - start, MB", _f(growth), "", "",
              f"< {RSS_GROWTH_MAX_MB:g}", growth < RSS_GROWTH_MAX_MB)
    table.add(part, "worker RSS growth, peak - warm, MB",
              _f(result["rss_peak_mb"] - result["rss_warm_mb"]))
    table.add(part, "Redis used_memory MB: before -> after (bytes/job)",
              f"{_f(result['redis_start_mb'])} -> {_f(result['redis_end_mb'])} "
              f"({_f(result['redis_bytes_per_job'], 0)})")
    twice = (result["generate_calls"] - n, result["paid_twice"], result["generate_400"],
             result["attempts_over_1"])
    table.add(part, "generate calls - covers; paid twice; 400s; jobs >1 attempt",
              "; ".join(str(x) for x in twice), "", "", "0; 0; 0; 0", not any(twice))


def profile_text(result: dict[str, Any]) -> str:
    """The profile findings as text: shares of samples and cost per cover (or call)."""
    if "error" in result:
        return f"profile: error: {result['error']}"
    prof = result["profile"]
    lines: list[str] = []

    def block(title: str, rows: list[list[Any]], per: float, unit: str) -> None:
        lines.append(f"  {title} (share of samples, {unit}):")
        lines.extend(f"    {share * 100:5.1f}%  {share * per:7.2f}  {label}"
                     for label, share in rows)

    worker = prof["worker"]
    per_cover = prof["worker_cpu_ms_per_cover"]
    lines.append(f"profile of worker 0 (main + pool processes) during the drain: py-spy "
                 f"{PROFILE_RATE_HZ} Hz, {worker['samples']} samples; the workers used "
                 f"{per_cover:.2f} CPU ms per cover (under the profiler), split by worker "
                 "0's shares")
    block("by process and thread", worker["roles"], per_cover, "ms/cover")
    block("deepest product frame -> what it called", worker["boundary"], per_cover,
          "ms/cover")
    block("what the libraries were doing (deepest celery/kombu/... frame)",
          worker["landmarks"], per_cover, "ms/cover")
    block("product functions, inclusive", worker["inclusive"], per_cover, "ms/cover")
    enqueue = prof["enqueue"]
    us = prof["enqueue_us"]
    lines.append(f"profile of enqueue_cover in the driver: {enqueue['samples']} samples; "
                 f"{us:.0f} µs per call (under the profiler)")
    block("deepest product frame -> what it called", enqueue["boundary"], us, "µs/call")
    block("what the libraries were doing", enqueue["landmarks"], us, "µs/call")
    return "\n".join(lines)


def parent(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the chosen parts' runs one after the other and print the table."""
    parts = [args.only] if args.only else list(PARTS)
    wanted = {run for part in parts for run in RUNS_OF_PART[part]}
    results: dict[str, dict[str, Any]] = {}
    for run in RUNS:
        if run in wanted:
            stderr(f"--- {run}")
            results[run] = spawn(run, args)
            if "error" in results[run]:
                stderr(f"{run}: {results[run]['error']}")
    table = Table()
    if "throughput" in parts:
        table_throughput(table, results["throughput-ours"], results["throughput-plain"])
    if "enqueue" in parts:
        table_enqueue(table, results["enqueue"])
    if "latency" in parts:
        table_latency(table, results["latency-callback"], results["latency-polling"])
    if "calls" in parts:
        table_calls(table, [
            (f"callbacks, throughput run (poll {THROUGHPUT_POLL_S:g}s)",
             results["throughput-ours"]),
            ("callbacks, latency run (poll 30s)", results["latency-callback"]),
            ("polling only, latency run (poll 1s)", results["latency-polling"]),
        ])
    if "scale" in parts:
        table_scale(table, results["scale"])
    print()
    print(f"kie-covers performance: {args.workers} worker processes x {args.concurrency} "
          f"pool slots, --covers {args.covers}, --in-flight {args.in_flight}")
    if table.rows:
        print(table.render())
    if "profile" in parts:
        print()
        print(profile_text(results["profile"]))
    print()
    for run, result in results.items():
        note = f"  ERROR: {result['error']}" if "error" in result else ""
        print(f"run {run}: {_f(result.get('wall_s'), 0)} s, load average "
              f"{_f(result.get('load_before'), 2)} before, {_f(result.get('load_after'), 2)} "
              f"after{note}")
    print(f"machine: os.cpu_count()={os.cpu_count()}, {platform.platform()}, "
          f"Python {platform.python_version()}")
    print("command: " + shlex.join([Path(sys.executable).name, "-m", "bench.perf", *argv]))
    return 1 if any("error" in r for r in results.values()) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a run broke)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf",
        description="Throughput, enqueue cost, completion latency, API calls per cover and "
                    "memory with many covers in flight, against the Kie stand-in.")
    parser.add_argument("--covers", type=positive_int, default=2000,
                        help="covers per throughput run (default %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=2,
                        help="worker processes (default %(default)s)")
    parser.add_argument("--concurrency", type=positive_int, default=2,
                        help="pool slots per worker process (default %(default)s)")
    parser.add_argument("--in-flight", type=positive_int, default=10000,
                        help="covers waiting at once in the scale part (default %(default)s)")
    parser.add_argument("--only", choices=PARTS, help="run one part only")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs of clean runs")
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return child(args)
    return parent(args, argv)


if __name__ == "__main__":
    sys.exit(main())
