"""The ``enqueue`` and ``latency`` parts of `bench.perf`: what a caller waits for.

``enqueue``: microseconds per `enqueue_cover` call against a bare ``.delay()`` of
a trivial task of a stock Celery app, on the same Redis, in interleaved blocks so
both share the noise; no worker runs.

``latency``: milliseconds from the stand-in finishing a cover (its record-info
``completeTime``, the moment it sends the callback) to the job's ``finished_at``;
once with callbacks ending the jobs, once polling only.
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import requests

from bench.common import stderr
from bench.perf_setup import (
    ENQUEUE_WARMUP,
    Stage,
    ours_settings,
    read_jobs,
    stage,
    start_ours,
)
from kie_covers import enqueue_cover

#: Calls per pipeline in the enqueue part, and calls per block.
ENQUEUE_CALLS = 2000
ENQUEUE_BLOCK = 100
#: KIE_POLL_INTERVAL (s) of the enqueue run (no worker runs; it only has to be valid).
ENQUEUE_POLL_S = 30.0
#: Seconds the latency runs' covers take in the stand-in.
LATENCY_COVER_S = 0.5
#: Jobs per latency run, and how many are enqueued per second; jobs measured apart
#: before them (the first callbacks after ``covers web`` starts pay its start-up).
LATENCY_JOBS = 200
LATENCY_WARMUP_JOBS = 10
LATENCY_PACE_PER_S = 20.0
#: KIE_POLL_INTERVAL (s) of the latency runs: with callbacks, and polling only.
LATENCY_POLL_CALLBACKS_S = 30.0
LATENCY_POLL_ONLY_S = 1.0
#: Seconds a latency run waits for the notices of a batch once its jobs ended.
NOTICES_WAIT_S = 30.0
#: Seconds for each record-info call that reads a cover's ``completeTime``.
RECORD_INFO_TIMEOUT_S = 10.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..1) of `values`; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- part 2: enqueue cost ---------------------------------------------------------------


def run_enqueue(keep_logs: bool) -> dict[str, Any]:
    """Time `enqueue_cover` and a bare ``.delay()`` call by call, interleaved in blocks.

    Returns, for ``ours`` and ``bare``: ``median_us``, ``p99_us``, ``mean_us``
    (microseconds per call) and ``calls``.
    """
    with stage("enqueue", 0.0, ours_settings(ENQUEUE_POLL_S, None), web=False,
               keep_logs=keep_logs) as st:
        # Only now: the plain app reads REDIS_URL and the Kie settings at import.
        from bench import plain_perf_app  # noqa: PLC0415

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


def _paced(st: Stage, count: int) -> tuple[list[str], list[str]]:
    """Enqueue `count` jobs at LATENCY_PACE_PER_S; wait for them and their notices.

    Returns their ids and the ids that never ended."""
    ids: list[str] = []
    notices = st.sink.notices + count
    begin = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, begin + i / LATENCY_PACE_PER_S - time.monotonic()))
        ids.append(enqueue_cover(uuid.uuid4().hex, st.sink.url))
    return ids, st.wait_ended(ids, notices, NOTICES_WAIT_S, interval_s=0.05)


def _latencies_ms(st: Stage, session: requests.Session,
                  jobs: Sequence[Any]) -> list[float]:
    """Milliseconds from the stand-in's ``completeTime`` to ``finished_at``, per
    finished job of `jobs` (asked of the stand-in's record-info)."""
    found: list[float] = []
    for job in jobs:
        if job is None or not job.cover_task_id or job.finished_at is None:
            continue
        # Epoch milliseconds, not the documented ISO-8601 text: the stand-in's style.
        answer = session.get(f"{st.standin.base_url}/api/v1/suno/cover/record-info",
                             params={"taskId": job.cover_task_id},
                             headers={"X-Standin-Style": "epoch-times"},
                             timeout=RECORD_INFO_TIMEOUT_S)
        complete_ms = answer.json()["data"]["completeTime"]
        found.append(job.finished_at * 1000 - complete_ms)
    return found


def run_latency(mode: str, workers: int, concurrency: int, keep_logs: bool) -> dict[str, Any]:
    """`LATENCY_JOBS` jobs at `LATENCY_PACE_PER_S`; stand-in completion -> ``finished_at``.

    First `LATENCY_WARMUP_JOBS` jobs (same pace) are done and measured apart: the
    first callbacks after ``covers web`` starts pay its lazy start-up.

    Args:
        mode: ``callback`` (callbacks end the jobs) or ``polling`` (callbacks dropped).
        workers: worker processes.
        concurrency: pool slots per worker process.
        keep_logs: keep the logs of a clean run too.

    Returns:
        The latencies in ms (median, p99, max, min; warm-up median and max), job
        counts and the stand-in's call counts.
    """
    poll_s = LATENCY_POLL_CALLBACKS_S if mode == "callback" else LATENCY_POLL_ONLY_S
    name = f"latency-{mode}"
    with stage(name, LATENCY_COVER_S, ours_settings(poll_s, None), web=True,
               keep_logs=keep_logs) as st:
        if mode == "polling":
            st.standin.set_callback_mode("drop")
        pool = start_ours(st, workers, concurrency)
        try:
            stderr(f"{name}: {LATENCY_WARMUP_JOBS} warm-up jobs, then {LATENCY_JOBS} jobs "
                   f"at {LATENCY_PACE_PER_S:g}/s")
            warm_ids, warm_pending = _paced(st, LATENCY_WARMUP_JOBS)
            ids, pending = _paced(st, LATENCY_JOBS)
        finally:
            pool.stop()
        counts = st.standin.counts()
        warm_jobs, jobs = read_jobs(warm_ids), read_jobs(ids)
        # Only now (the counts are read): when the stand-in finished each cover.
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {st.api_key}"
        warm_ms, main_ms = _latencies_ms(st, session, warm_jobs), _latencies_ms(st, session, jobs)
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
