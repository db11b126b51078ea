"""The ``scale`` part of `bench.perf`: many covers waiting at once.

``--in-flight`` covers are enqueued while every cover takes SCALE_COVER_S in the
stand-in, its callbacks are dropped and KIE_POLL_INTERVAL is SCALE_POLL_S (with
KIE_POLL_TIMEOUT SCALE_POLL_TIMEOUT_S), so all of them wait at the same time, even
when submitting 100,000 takes many minutes. The stand-in finishes covers from one
scheduler thread, so a pending cover costs it a heap entry, not a thread.
Measured: worker RSS (main and pool processes, sampled every RSS_SAMPLE_S) at
start, after a warm-up, at its peak and at the end; Redis ``used_memory``; and
whether anything ran twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.common import stderr, wait_all
from bench.perf_setup import WAIT_TIMEOUT_S, ours_settings, read_jobs, stage, start_ours, wait_for
from bench.proc import children_of, rss_mb, with_children
from kie_covers import enqueue_cover
from kie_covers.config import keys
from kie_covers.runtime.connections import get_redis

#: Scale part: cover seconds, KIE_POLL_INTERVAL and KIE_POLL_TIMEOUT (s), warm-up jobs
#: before the "warm" RSS. Long enough that no cover ends and no job polls during a
#: run of 100,000 on 2 shared cores (about half an hour at the slowest seen).
SCALE_COVER_S = 7200.0
SCALE_POLL_S = 3600.0
SCALE_POLL_TIMEOUT_S = 14400.0
SCALE_WARM_JOBS = 50
#: Seconds between RSS samples.
RSS_SAMPLE_S = 0.25
#: Seconds to wait for the warm-up jobs' generates, and for every job to be seen
#: ``submitted`` once all generates were accepted.
WARM_WAIT_S = 60.0
SUBMITTED_WAIT_S = 120.0
#: Slowest submit rate (covers/s) the wait for all generates allows, so the wait
#: grows with --in-flight (never below WAIT_TIMEOUT_S).
MIN_SUBMIT_PER_S = 40.0
#: Seconds the workers are left to settle before an RSS reading, and after all jobs
#: are submitted (anything that would run twice has its chance).
SETTLE_S = 1.0
TWICE_WAIT_S = 2.0


def scale_child_timeout_s(in_flight: int, floor_s: float) -> float:
    """Seconds the parent gives the scale run: `floor_s`, or more when enqueuing and
    submitting `in_flight` covers at MIN_SUBMIT_PER_S, twice over, could take longer."""
    return max(floor_s, 2 * in_flight / MIN_SUBMIT_PER_S)


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
        every_s: seconds between samples (default RSS_SAMPLE_S).
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


def run_scale(in_flight: int, workers: int, concurrency: int, keep_logs: bool
              ) -> dict[str, Any]:
    """`in_flight` covers waiting at once: worker RSS, Redis memory, nothing twice.

    Returns worker RSS in MB (start, warm, peak, end; by kind), Redis memory (MB,
    and bytes per job), enqueue and submit times in seconds, and the counts that
    would show anything done twice (generate calls, paid twice, 400 answers, jobs
    with more than one attempt).
    """
    settings = {**ours_settings(SCALE_POLL_S, None),
                "KIE_POLL_TIMEOUT": f"{SCALE_POLL_TIMEOUT_S:g}"}
    with stage("scale", SCALE_COVER_S, settings, web=False, keep_logs=keep_logs) as st:
        st.standin.set_callback_mode("drop")
        redis_client = get_redis()
        pool = start_ours(st, workers, concurrency)
        try:
            mains = [p.pid for p in pool.processes]
            sampler = RssSampler(mains)
            time.sleep(SETTLE_S)
            rss_start = sampler.now_mb()
            by_process_start = rss_by_process(mains)
            memory_start = int(redis_client.info("memory")["used_memory"])
            sampler.start()
            music = [uuid.uuid4().hex for _ in range(in_flight)]
            warm = min(SCALE_WARM_JOBS, in_flight)
            ids = [enqueue_cover(m, st.sink.url) for m in music[:warm]]
            wait_for(lambda: len(st.standin.generate_times()) >= warm, WARM_WAIT_S)
            time.sleep(SETTLE_S)
            rss_warm = sampler.now_mb()
            by_process_warm = rss_by_process(mains)
            stderr(f"scale: enqueuing {in_flight - warm} more covers")
            started = time.monotonic()
            ids.extend(enqueue_cover(m, st.sink.url) for m in music[warm:])
            enqueue_s = time.monotonic() - started
            stderr(f"scale: enqueued in {enqueue_s:.1f}s; waiting until all are submitted")
            wait_for(lambda: len(st.standin.generate_times()) >= in_flight,
                     max(WAIT_TIMEOUT_S, in_flight / MIN_SUBMIT_PER_S), interval_s=0.25)

            def submitted(job_id: str) -> bool:
                return redis_client.hget(keys.job(job_id), "state") == "submitted"

            _, pending = wait_all(submitted, ids, SUBMITTED_WAIT_S)
            submitted_s = time.monotonic() - started
            time.sleep(TWICE_WAIT_S)  # anything that would run twice has its chance
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
