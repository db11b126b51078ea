"""Benchmark: reading the cluster overview, against counting by scanning job keys.

    python -m bench.overview [--sizes 1000,10000,50000] [--reads 30]

For each size, fills a fresh database of its own redis-server with that many jobs
through the job store's scripts (a quarter each queued, waiting for a rate slot,
submitted, and ended: succeeded or failed), then prints one row: the median
milliseconds of one `read_overview` (one pipelined round trip over the indexes),
the median milliseconds of counting the same states by SCAN over every job key
(what a console without the indexes would do), whether both agree, and the Redis
bytes the state and wait indexes hold per job.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial

import redis

from kie_covers.config import keys
from kie_covers.core import errors
from kie_covers.core.states import JobState, WaitReason
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.store.jobs import JobStore, Lifetimes
from kie_covers.store.overview import read_overview
from kie_covers.store.run import Run


def fill(store: JobStore, jobs: int) -> None:
    """`jobs` jobs, a quarter in each of: queued, waiting for a slot, submitted, ended."""
    for n in range(jobs):
        job_id, _ = store.enqueue(uuid.uuid4().hex, uuid.uuid4().hex,
                                  "http://127.0.0.1:9/cb", 600, "q")
        part = n % 4
        if part == 0:
            continue
        if part == 3:
            store.finish(job_id, images=["x"] if n % 8 == 3 else None,
                         error=None if n % 8 == 3 else errors.UpstreamError("boom", 502))
            continue
        run = store.begin(job_id, "", "", 600, "q")
        assert isinstance(run, Run)
        if part == 1:
            run.wait(60, wait_reason=WaitReason.RATE_SLOT)
        else:
            run.submitted(f"cover-{job_id}", 60)


def scan_count(client: redis.Redis) -> Counter[str]:
    """States by SCAN over every job key (no index)."""
    states: Counter[str] = Counter()
    pipe = client.pipeline(transaction=False)
    for key in client.scan_iter(match=keys.job("*"), count=1000):
        pipe.hget(key, "state")
    for state in pipe.execute():
        states[str(state)] += 1
    return states


def median_ms(action: Callable[[], object], reads: int) -> float:
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def index_bytes(client: redis.Redis) -> int:
    names = [keys.state_index(s.value) for s in JobState]
    names += [keys.waiting(r.value) for r in WaitReason]
    return sum(int(client.memory_usage(name) or 0) for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--reads", type=int, default=30)
    args = parser.parse_args()
    print(f"{'jobs':>8} {'overview ms':>12} {'scan ms':>10} {'agree':>6} "
          f"{'index B/job':>12}")
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(directory).start()
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                client = redis.Redis.from_url(server.url, decode_responses=True)
                client.flushdb()
                store = JobStore(client, Lifetimes(result_ttl_s=3600, failure_ttl_s=3600))
                fill(store, size)
                view = read_overview(client, dead_after_s=5)
                scanned = scan_count(client)
                agree = all(view.jobs[s] == scanned[s.value] for s in JobState)
                fast = median_ms(partial(read_overview, client, dead_after_s=5), args.reads)
                slow = median_ms(partial(scan_count, client), max(3, args.reads // 10))
                print(f"{size:>8} {fast:>12.2f} {slow:>10.1f} {agree!s:>6} "
                      f"{index_bytes(client) / size:>12.1f}", flush=True)
                client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
