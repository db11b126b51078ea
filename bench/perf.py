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
environment before it first uses the product, with its own fresh Redis and stand-in.

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
5. ``scale``: ``--in-flight`` covers waiting at once (covers take 2 hours,
   callbacks dropped, KIE_POLL_INTERVAL 1 hour, so none ends or polls even when
   100,000 take many minutes to submit): enqueue them all, wait until every
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

This module is the entry point: the command line, the child runs, the printout.
The parts live in `bench.perf_setup` (what a run starts), `bench.perf_throughput`,
`bench.perf_latency` (enqueue and completion latency), `bench.perf_scale`,
`bench.perf_profile` (py-spy) and `bench.perf_report` (the table).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import (
    add_pool_options,
    error_text,
    exit_on_stop_signals,
    positive_int,
    print_result,
    run_child,
    stderr,
)
from bench.perf_latency import run_enqueue, run_latency
from bench.perf_report import build_table, fmt, profile_text
from bench.perf_scale import run_scale, scale_child_timeout_s
from bench.perf_throughput import run_throughput_ours, run_throughput_plain

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
#: The runs in the order they go: the scale run last, as it leaves the most behind
#: (its Redis holds --in-flight jobs until stopped).
RUNS = ("throughput-ours", "throughput-plain", "enqueue", "latency-callback",
        "latency-polling", "profile", "scale")

#: Seconds the parent gives a child run (the scale run may get more, see
#: `scale_child_timeout_s`), and then, after SIGTERM, to clean up.
CHILD_TIMEOUT_S = 1500.0
CHILD_GRACE_S = 60.0


# -- child process ------------------------------------------------------------------------


def run_one(run: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run `run` (one of RUNS) in this process; its result dict."""
    if run == "throughput-ours":
        return run_throughput_ours(args.covers, args.workers, args.concurrency, args.keep_logs)
    if run == "profile":
        return run_throughput_ours(args.covers, args.workers, args.concurrency,
                                   args.keep_logs, profile=True)
    if run == "throughput-plain":
        return run_throughput_plain(args.covers, args.workers, args.concurrency,
                                    args.keep_logs)
    if run == "enqueue":
        return run_enqueue(args.keep_logs)
    if run.startswith("latency-"):
        return run_latency(run.removeprefix("latency-"), args.workers, args.concurrency,
                           args.keep_logs)
    return run_scale(args.in_flight, args.workers, args.concurrency, args.keep_logs)


def child(args: argparse.Namespace) -> int:
    """``--run NAME``: one run; prints its result line (`print_result`).

    Returns the exit status: 1 if the run broke (its result then has ``error``).
    """
    exit_on_stop_signals()
    load = os.getloadavg()[0]
    try:
        result = run_one(args.run, args)
    except BaseException as error:
        traceback.print_exc()
        result = {"error": error_text(error)}
    result["load_before"] = load
    result["load_after"] = os.getloadavg()[0]
    print_result(result)
    return 1 if "error" in result else 0


def spawn(run: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run `run` in a child process; its result dict (with ``error`` if it broke) and
    ``wall_s``, the seconds the child took."""
    command = [sys.executable, "-m", "bench.perf", "--run", run, "--covers", str(args.covers),
               "--workers", str(args.workers), "--concurrency", str(args.concurrency),
               "--in-flight", str(args.in_flight)]
    if args.keep_logs:
        command.append("--keep-logs")
    timeout_s = (scale_child_timeout_s(args.in_flight, CHILD_TIMEOUT_S) if run == "scale"
                 else CHILD_TIMEOUT_S)
    started = time.monotonic()
    result, returncode = run_child(command, timeout_s, CHILD_GRACE_S)
    if result is None:
        return {"error": f"child exited with {returncode} and no result"}
    result["wall_s"] = time.monotonic() - started
    return result


# -- parent process -----------------------------------------------------------------------


def parent(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the chosen parts' runs one after the other and print the table.

    Returns the exit status: 1 if a run broke.
    """
    parts = [args.only] if args.only else list(PARTS)
    wanted = {run for part in parts for run in RUNS_OF_PART[part]}
    results: dict[str, dict[str, Any]] = {}
    for run in RUNS:
        if run in wanted:
            stderr(f"--- {run}")
            results[run] = spawn(run, args)
            if "error" in results[run]:
                stderr(f"{run}: {results[run]['error']}")
    table = build_table(parts, results)
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
        print(f"run {run}: {fmt(result.get('wall_s'), 0)} s, load average "
              f"{fmt(result.get('load_before'), 2)} before, "
              f"{fmt(result.get('load_after'), 2)} after{note}")
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
    add_pool_options(parser, workers=2, concurrency=2)
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
