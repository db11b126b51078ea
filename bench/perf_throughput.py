"""The ``throughput`` part of `bench.perf` (and the run the ``profile`` part repeats).

Both pipelines fill the queue first, then start the workers, and are timed from
the first generate the stand-in accepted to the last job ended: ours
(``enqueue_cover``, callbacks to ``covers web``) and `bench.plain_perf_app`
(POST generate, GET record-info once). Also CPU per cover of the workers (main
and pool processes), redis-server and ``covers web``, counted from the moment
the workers are seen ready, and Redis commands per cover (``INFO commandstats``
of the run's fresh server, enqueues included).
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from bench.common import Workers, celery_ping, stderr, wait_all
from bench.perf_profile import PySpy, Stack, summarize_profile
from bench.perf_setup import (
    ENQUEUE_WARMUP,
    QUEUE_PLAIN,
    WAIT_TIMEOUT_S,
    Stage,
    ours_settings,
    read_jobs,
    stage,
    start_ours,
)
from bench.proc import cpu_s, with_children
from kie_covers import enqueue_cover
from kie_covers.runtime.connections import get_redis

#: KIE_POLL_INTERVAL (s) of the throughput run: the default, as callbacks are on and
#: end the jobs (polls are the fallback for a lost callback, none are lost here).
THROUGHPUT_POLL_S = 30.0
#: Seconds the run waits for the app's notices once every job has ended.
NOTICES_WAIT_S = 60.0


def redis_commands(url: str) -> dict[str, int]:
    """Calls per Redis command since the server at `url` started (``INFO commandstats``)."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def wall_offset_s() -> float:
    """time.time() - time.monotonic(), in seconds: turns the stand-in's monotonic times
    to wall time."""
    return time.time() - time.monotonic()


@dataclass
class Enqueued:
    """Jobs put in the queue before any worker runs.

    Attributes:
        ids: their job ids, in the order enqueued.
        seconds: time the enqueues after the warm-up took, s.
        warm: enqueues made before the clock (and the profiler) started.
        stacks: py-spy stacks of this process over the timed enqueues ([] unprofiled).
    """

    ids: list[str]
    seconds: float
    warm: int
    stacks: list[Stack]


@dataclass
class Drain:
    """What the workers' drain of the queue cost.

    Attributes:
        pending: job ids that had not ended after WAIT_TIMEOUT_S.
        generated0: generates the stand-in had accepted when the CPU count began.
        cpu_s: CPU seconds over the drain: ``workers`` (all main and pool
            processes), ``redis``, ``web``.
        profiled_cpu_s: CPU seconds of all workers over the profiled span.
        profiled_jobs: generates accepted over the profiled span.
        stacks: py-spy stacks of worker 0 and its pool ([] unprofiled).
    """

    pending: list[str]
    generated0: int
    cpu_s: dict[str, float]
    profiled_cpu_s: float
    profiled_jobs: int
    stacks: list[Stack]


def _enqueue(st: Stage, name: str, covers: int, profile: bool) -> Enqueued:
    """Enqueue `covers` jobs with no worker running; with `profile`, py-spy samples
    this process over the timed enqueues."""
    music = [uuid.uuid4().hex for _ in range(covers)]
    stderr(f"{name}: enqueuing {covers} covers (no worker yet)")
    # Connections, script loads, compiled regexes: not what a call costs.
    warm = min(ENQUEUE_WARMUP, covers // 10)
    ids = [enqueue_cover(m, st.sink.url) for m in music[:warm]]
    spy = PySpy(os.getpid(), st.log_dir / "enqueue.raw") if profile else None
    started = time.perf_counter()
    ids.extend(enqueue_cover(m, st.sink.url) for m in music[warm:])
    seconds = time.perf_counter() - started
    return Enqueued(ids, seconds, warm, spy.stop() if spy is not None else [])


def _drain(st: Stage, ids: list[str], covers: int, workers: int, concurrency: int,
           profile: bool) -> Drain:
    """Start our workers and wait until every job ended and its notice arrived;
    with `profile`, py-spy samples worker 0 (with its pool) meanwhile."""
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
        spy_cpu0 = sum(cpu_s(p) for p in worker_pids)
        spy_jobs0 = len(st.standin.generate_times())
        pending = st.wait_ended(ids, covers, NOTICES_WAIT_S)
        spy_jobs1 = len(st.standin.generate_times())
        spy_cpu1 = sum(cpu_s(p) for p in worker_pids)
        stacks = spy.stop() if spy is not None else []
        cpu1 = {pid: cpu_s(pid) for pid in cpu0}
    finally:
        pool.stop()
    used = {"workers": sum(cpu1[p] - cpu0[p] for p in worker_pids),
            **{role: cpu1[pid] - cpu0[pid] for role, pid in others.items()}}
    return Drain(pending, generated0, used, spy_cpu1 - spy_cpu0, spy_jobs1 - spy_jobs0,
                 stacks)


def run_throughput_ours(covers: int, workers: int, concurrency: int, keep_logs: bool,
                        profile: bool = False) -> dict[str, Any]:
    """Fill the queue with `covers` jobs, start our workers, time the drain.

    With `profile` (default off), py-spy samples this process during the enqueues
    and worker 0 (with its pool) during the drain. Returns the run's figures
    (seconds, CPU ms per cover, call counts; see `bench.perf_report`).
    """
    name = "profile" if profile else "throughput-ours"
    with stage(name, 0.0, ours_settings(THROUGHPUT_POLL_S, None), web=True,
               keep_logs=keep_logs) as st:
        offset = wall_offset_s()
        enqueued = _enqueue(st, name, covers, profile)
        get_redis().ping()
        stderr(f"{name}: starting {workers} workers x {concurrency}")
        drain = _drain(st, enqueued.ids, covers, workers, concurrency, profile)
        counts, answers = st.standin.counts(), st.standin.answers()
        commands = redis_commands(st.redis.url)
        paid = st.standin.paid()
        first_generate = st.standin.generate_times()[0] + offset
        jobs = read_jobs(enqueued.ids)
        notices = st.sink.notices
    states = Counter(j.state.value if j else "missing" for j in jobs)
    finished = [j.finished_at for j in jobs if j and j.finished_at]
    notified = [j.notified_at for j in jobs if j and j.notified_at]
    # CPU is counted from the moment the workers were seen ready; they may have done
    # some covers before that, so it is divided by the covers generated since.
    measured = max(1, covers - drain.generated0)
    result: dict[str, Any] = {
        "covers": covers, "succeeded": states["succeeded"], "failed": states["failed"],
        "unfinished": len(drain.pending), "notices": notices, "enqueue_s": enqueued.seconds,
        "seconds_ended": max(finished) - first_generate if finished else None,
        "seconds_notified": max(notified) - first_generate if len(notified) == covers
        else None,
        "cpu_covers": measured,
        "cpu_ms_workers": 1000 * drain.cpu_s["workers"] / measured,
        "cpu_ms_redis": 1000 * drain.cpu_s["redis"] / measured,
        "cpu_ms_web": 1000 * drain.cpu_s["web"] / measured,
        "generate_calls": counts["generate"], "record_info_calls": counts["record-info"],
        "answers": answers, "paid_twice": sum(1 for n in paid.values() if n > 1),
        "polls": sum(j.polls for j in jobs if j), "attempts": sum(j.attempts for j in jobs if j),
        "redis_commands": commands,
    }
    if profile:
        result["profile"] = {
            "enqueue": summarize_profile(enqueued.stacks, root_filter="enqueue_cover"),
            "enqueue_us": 1e6 * enqueued.seconds / max(1, covers - enqueued.warm),
            "worker": summarize_profile(drain.stacks),
            "worker_cpu_ms_per_cover": 1000 * drain.profiled_cpu_s
            / max(1, drain.profiled_jobs),
        }
    return result


def _done_times(results: list[Any]) -> list[float]:
    """Unix times (s) at which the Celery `results` were done (``date_done``; naive
    times are UTC), for those that have one."""
    done: list[float] = []
    for r in results:
        when = r.date_done
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            done.append(when.timestamp())
    return done


def run_throughput_plain(covers: int, workers: int, concurrency: int,
                         keep_logs: bool) -> dict[str, Any]:
    """Fill the queue with `covers` plain tasks, start plain workers, time the drain.

    Returns the run's figures (seconds, CPU ms per cover, call counts).
    """
    with stage("throughput-plain", 0.0, {"PLAIN_QUEUE": QUEUE_PLAIN}, web=False,
               keep_logs=keep_logs) as st:
        # Only now: the plain app reads REDIS_URL and the Kie settings at import.
        from bench import plain_perf_app  # noqa: PLC0415

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
        done = _done_times(results)
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
