"""Benchmark: this project's cluster-wide rate limiter against a plain Celery app.

    python -m bench.rate_limit [--jobs 300] [--workers 4] [--limit 20/2s] [--only ours|plain]

Runs two pipelines one after the other, each on fresh state (its own
redis-server, its own Kie stand-in whose generate limit is ``--limit``), and
prints one table comparing them:

- **ours**: ``--workers`` separate ``celery -A kie_covers.worker worker`` processes
  of this project (``--concurrency`` pool slots each), with ``KIE_RATE_LIMIT`` set
  to the same limit.
- **plain**: ``--workers`` processes of `bench.plain_app`, a typical Celery task
  with ``rate_limit`` (per worker) set to the limit's average rate and
  ``autoretry_for`` exponential backoff on 429.

Columns: jobs, succeeded, failed; accepted generates per second (count divided
by the time between the first and the last accepted generate) and that as a
share of the allowed rate (limit / window); the 429 answers the stand-in gave;
the drain time (seconds from the first enqueue until every job ended); and the
music tasks paid more than once. Below the table, a self-check: accepted
generates that were the (limit+1)-th in some window (0 expected, since the
stand-in refuses those).

Each pipeline runs in a child process (``--run ours|plain``, which prints one
JSON line), so the settings it puts in the environment are in place before the
project reads them, and nothing carries over from one pipeline to the next.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    CHILD_MARGIN_S,
    LimitedKie,
    Workers,
    accepted_per_s,
    add_pool_options,
    celery_ping,
    duplicates_paid,
    error_text,
    exit_on_stop_signals,
    format_limit,
    full_window_share,
    limited_kie,
    limited_settings,
    parse_limit,
    positive_int,
    print_result,
    run_child,
    set_environ,
    stderr,
    wait_all,
    window_violations,
)
from kie_covers import enqueue_cover, get_cover
from kie_covers.runtime.app import app
from kie_covers.worker.table import render

PIPELINES = ("ours", "plain")
#: The callBackUrl jobs carry: nothing listens there; the stand-in swallows the error
#: and jobs end by polling.
CALLBACK_URL = "http://127.0.0.1:9/cb"
#: A run whose share of the allowed rate is under this (0..1) is worth a look.
MIN_SHARE = 0.95


@dataclass
class Result:
    """What one pipeline did.

    Attributes:
        pipeline: ``ours`` or ``plain``.
        jobs: jobs enqueued.
        succeeded: jobs that ended with a cover.
        failed: jobs that ended without one.
        unfinished: jobs not ended when the timeout passed.
        accepted: generates the stand-in accepted (and charged).
        accepted_per_s: accepted / (last accepted - first accepted), per second.
        allowed_per_s: the limit's average rate, per second.
        limit: calls allowed per window.
        answers_429: 429 answers the stand-in gave to generates.
        drain_s: seconds from the first enqueue until every job ended.
        duplicates_paid: music tasks charged more than once.
        window_violations: accepted generates that were the (limit+1)-th in a window.
        log_dir: where the logs are (deleted after a clean run unless --keep-logs).
        error: why the run broke, if it did.
    """

    pipeline: str
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    accepted: int = 0
    accepted_per_s: float = 0.0
    allowed_per_s: float = 0.0
    limit: int = 0
    answers_429: int = 0
    drain_s: float = 0.0
    duplicates_paid: int = 0
    window_violations: int = 0
    full_window_share: float = 0.0
    log_dir: str = ""
    error: str | None = None

    @property
    def share(self) -> float:
        """accepted_per_s as a share of allowed_per_s (1.0 = the whole allowed rate)."""
        return self.accepted_per_s / self.allowed_per_s if self.allowed_per_s else 0.0

    @property
    def steady_share(self) -> float:
        """The share without the burst of `limit` calls any first window allows.

        ``(accepted - limit) / (last - first)`` over the allowed rate: `share` counts
        that free burst, which weighs a lot in short runs.
        """
        if self.accepted <= self.limit or not self.accepted_per_s or not self.allowed_per_s:
            return 0.0
        span_s = self.accepted / self.accepted_per_s
        return (self.accepted - self.limit) / span_s / self.allowed_per_s

    def suspicious(self) -> bool:
        """True when its logs are worth keeping: a break, a failed or stuck job, a
        self-check that did not hold, or (ours) a 429 or a share under MIN_SHARE."""
        ours_off = self.pipeline == "ours" and (self.answers_429 > 0 or self.share < MIN_SHARE)
        return bool(self.error or self.failed or self.unfinished or self.window_violations
                    or self.duplicates_paid or ours_off)


# -- one pipeline (child process) -------------------------------------------------


def _run_ours(kie: LimitedKie, jobs: int, workers: int, concurrency: int,
              limit: tuple[int, float], timeout_s: float, log_dir: Path,
              result: Result) -> None:
    """This project's workers; fills `result` (counts and drain time)."""
    queue = "bench-ours"
    # First: the project reads its settings once, when it is first used (below).
    env = set_environ(limited_settings(kie, limit, queue))
    pool = Workers("kie_covers.worker", queue, workers, env, log_dir, concurrency=concurrency)
    try:
        stderr(f"ours: starting {workers} workers")
        pool.start(lambda: celery_ping(app))
        stderr(f"ours: enqueuing {jobs} jobs")
        started = time.monotonic()
        ids = [enqueue_cover(uuid.uuid4().hex, CALLBACK_URL) for _ in range(jobs)]

        def ended(job_id: str) -> bool:
            return get_cover(job_id)["state"] in ("succeeded", "failed")

        finished, pending = wait_all(ended, ids, timeout_s)
        states = Counter(get_cover(job_id)["state"] for job_id in ids)
        result.succeeded = states["succeeded"]
        result.failed = states["failed"]
        result.unfinished = len(pending)
        result.drain_s = finished - started
    finally:
        pool.stop()


def _run_plain(kie: LimitedKie, jobs: int, workers: int, concurrency: int,
               limit: tuple[int, float], timeout_s: float, log_dir: Path,
               result: Result) -> None:
    """The typical app (`bench.plain_app`); fills `result` (counts and drain time)."""
    queue = "bench-plain"
    env = set_environ({
        "REDIS_URL": kie.redis.url,
        "KIE_BASE_URL": kie.standin.base_url,
        "KIE_API_KEY": kie.api_key,
        "PLAIN_QUEUE": queue,
        # 20 per 2 s written as Celery's per-worker limit: "10/s".
        "PLAIN_RATE_LIMIT": f"{limit[0] / limit[1]:g}/s",
    })
    # Only now: the plain app reads REDIS_URL, the Kie settings and its limit at import.
    from bench import plain_app  # noqa: PLC0415

    pool = Workers("bench.plain_app", queue, workers, env, log_dir,
                   concurrency=concurrency)
    try:
        stderr(f"plain: starting {workers} workers")
        pool.start(lambda: celery_ping(plain_app.app))
        stderr(f"plain: enqueuing {jobs} jobs")
        started = time.monotonic()
        results = [plain_app.generate_cover.delay(uuid.uuid4().hex, CALLBACK_URL)
                   for _ in range(jobs)]
        by_id = {r.id: r for r in results}
        finished, pending = wait_all(lambda task_id: bool(by_id[task_id].ready()),
                                     list(by_id), timeout_s)
        states = Counter(r.state for r in results)
        result.succeeded = states["SUCCESS"]
        result.failed = states["FAILURE"]
        result.unfinished = len(pending)
        result.drain_s = finished - started
    finally:
        pool.stop()


def run_pipeline(name: str, jobs: int, workers: int, concurrency: int,
                 limit: tuple[int, float], timeout_s: float, keep_logs: bool) -> Result:
    """Run pipeline `name` on fresh state: its own redis-server and stand-in.

    Everything started here is stopped before it returns, on errors too.
    """
    log_dir = Path(tempfile.mkdtemp(prefix=f"kie-bench-{name}-"))
    result = Result(pipeline=name, jobs=jobs, allowed_per_s=limit[0] / limit[1],
                    limit=limit[0], log_dir=str(log_dir))
    try:
        with limited_kie(log_dir, limit) as kie:
            try:
                run = _run_ours if name == "ours" else _run_plain
                run(kie, jobs, workers, concurrency, limit, timeout_s, log_dir, result)
            finally:
                times = kie.standin.generate_times()
                result.accepted = len(times)
                result.accepted_per_s = accepted_per_s(times)
                result.window_violations = window_violations(times, *limit)
                result.full_window_share = full_window_share(times, *limit)
                result.answers_429 = kie.standin.answers().get("generate:429", 0)
                result.duplicates_paid = duplicates_paid(kie.standin.paid())
    except BaseException as error:  # reported in the table; SystemExit from SIGTERM too
        result.error = error_text(error)
    if not keep_logs and not result.suspicious():
        shutil.rmtree(log_dir, ignore_errors=True)
    return result


def _child(args: argparse.Namespace) -> int:
    """``--run NAME``: run one pipeline and print its result as one JSON line."""
    exit_on_stop_signals()
    result = run_pipeline(args.run, args.jobs, args.workers, args.concurrency, args.limit,
                          args.timeout, args.keep_logs)
    print_result(asdict(result))
    return 0 if result.error is None else 1


# -- the comparison (parent process) ----------------------------------------------


def _spawn(name: str, args: argparse.Namespace) -> Result:
    """Run pipeline `name` in a child process and read its result line."""
    command = [sys.executable, "-m", "bench.rate_limit", "--run", name,
               "--jobs", str(args.jobs), "--workers", str(args.workers),
               "--concurrency", str(args.concurrency),
               "--limit", format_limit(args.limit), "--timeout", str(args.timeout)]
    if args.keep_logs:
        command.append("--keep-logs")
    found, returncode = run_child(command, args.timeout + CHILD_MARGIN_S)
    if found is not None:
        return Result(**found)
    return Result(pipeline=name, jobs=args.jobs,
                  error=f"child exited with {returncode} and no result")


def _table(results: list[Result]) -> str:
    """The comparison table: one row per pipeline."""
    headers = ["pipeline", "jobs", "succeeded", "failed", "accepted/s",
               "share of allowed rate", "429 answers", "drain time s", "duplicates paid"]
    rows: list[list[Any]] = []
    for r in results:
        if r.error and not r.accepted and not r.succeeded:
            rows.append([r.pipeline, r.jobs, "error", "", "", "", "", "", ""])
            continue
        rows.append([r.pipeline, r.jobs, r.succeeded, r.failed, f"{r.accepted_per_s:.2f}",
                     f"{r.share * 100:.1f}%", r.answers_429, f"{r.drain_s:.1f}",
                     r.duplicates_paid])
    return render(headers, rows)


def _parent(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the chosen pipelines one after the other and print the comparison."""
    names = [args.only] if args.only else list(PIPELINES)
    count, per = args.limit
    results: list[Result] = []
    for name in names:
        stderr(f"--- {name}")
        results.append(_spawn(name, args))
    print()
    print(f"rate limit: {count} generates per {per:g} s (allowed rate {count / per:g}/s), "
          f"{args.jobs} jobs, {args.workers} worker processes x {args.concurrency} "
          "pool slots each")
    print(_table(results))
    print()
    checks = ", ".join(f"{r.pipeline} {r.window_violations}" for r in results)
    print(f"self-check, window violations (accepted generates that were number {count + 1} "
          f"in some {per:g} s window; 0 expected): {checks}")
    steady = ", ".join(f"{r.pipeline} {r.steady_share * 100:.1f}%" for r in results)
    print(f"share without the first window's burst ((accepted - {count}) / "
          f"(last - first) / allowed rate): {steady}")
    full = ", ".join(f"{r.pipeline} {r.full_window_share * 100:.1f}%" for r in results)
    print(f"share once the limit binds ({per:g} s / mean time from call i to call "
          f"i+{count}): {full}")
    for r in results:
        if r.unfinished:
            print(f"{r.pipeline}: {r.unfinished} jobs had not ended after {args.timeout:g} s")
        if r.error:
            print(f"{r.pipeline}: error: {r.error}")
        if r.log_dir and Path(r.log_dir).exists():
            print(f"{r.pipeline}: logs kept in {r.log_dir}")
    print()
    print("command: " + shlex.join([Path(sys.executable).name, "-m", "bench.rate_limit",
                                    *argv]))
    print(f"os.cpu_count(): {os.cpu_count()}")
    return 1 if any(r.error for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a pipeline broke)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.rate_limit",
        description="Compare this project's cluster-wide rate limiter with a plain "
                    "Celery app, against the Kie stand-in.")
    parser.add_argument("--jobs", type=positive_int, default=300,
                        help="jobs per pipeline (default %(default)s)")
    add_pool_options(parser, workers=4, concurrency=4)  # per pipeline; 4 slots as the Procfile
    parser.add_argument("--limit", type=parse_limit, default=(20, 2.0),
                        help="generates allowed per window, e.g. 20/2s (default 20/2s); "
                             "the stand-in enforces it, both pipelines are told it")
    parser.add_argument("--only", choices=PIPELINES, help="run one pipeline only")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for a pipeline's jobs (default 600)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the logs of clean runs too")
    parser.add_argument("--run", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return _child(args)
    return _parent(args, argv)


if __name__ == "__main__":
    sys.exit(main())
