"""The failure index: failed jobs by time, kind and code, and the retry compare-and-set.

`JobStore.finish` indexes each failure once in sorted sets (all, by kind, by
code; see `kie_covers.config.keys`), so listing newest first, filtering and
counting never scan Redis. Failed jobs keep their record for
``COVERS_FAILURE_TTL`` seconds; entries whose record has expired (or was
retried) are tidied away as they are met.

A music task has at most one failure row, its newest job's: the scripts that give
a music task a newer job (enqueue, a retry, a raw message's job ending) take the
older failed job out of every index in the same step (``lua/failure_rows.lua``).
Rows written before that rule (several failed jobs of one music task) are tidied
away as they are met: a failed job whose music task now names another job is
not listed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from kie_covers.config import keys
from kie_covers.core.states import JobState
from kie_covers.store.due import Due, due_ms
from kie_covers.store.record import RETRY_RESETS, Job, flat
from kie_covers.store.scripts import register

#: Job ids read per round trip while listing.
PAGE = 100


def index_key(kind: str | None = None, code: int | str | None = None) -> str:
    """The sorted set that lists failures of `kind` (first), or `code`, or all."""
    if kind:
        return keys.failures_by_kind(kind)
    if code is not None:
        return keys.failures_by_code(code)
    return keys.FAILURES


def _bounds(since: float | None, until: float | None) -> tuple[str, str]:
    """ZRANGEBYSCORE bounds (ms scores) of failures from `since` to `until` (unix s)."""
    low = "-inf" if since is None else str(int(since * 1000))
    high = "+inf" if until is None else str(int(until * 1000))
    return low, high


class FailureIndex:
    """Reads the failure index, and queues failed jobs again.

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        failure_ttl_s: seconds a failed record lives (COVERS_FAILURE_TTL).
    """

    def __init__(self, client: redis.Redis, failure_ttl_s: float) -> None:
        self.redis = client
        self.failure_ttl_s = failure_ttl_s
        self._retry = register(client, "retry_failed")

    def _prune(self, index: str) -> None:
        cutoff_ms = int((time.time() - self.failure_ttl_s) * 1000)
        self.redis.zremrangebyscore(index, "-inf", cutoff_ms)

    def failed_jobs(self, job_ids: Sequence[str], index: str = keys.FAILURES) -> list[Job]:
        """The records of those jobs that are still failed, in order (pipelined).

        Ids whose record expired or is no longer failed are taken out of `index`;
        failed jobs whose music task has a newer job since (rows from before one row
        per music task was kept) out of every index.
        """
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        records = pipe.execute()
        for raw in records:
            pipe.get(keys.music(raw.get("music_task_id") or ""))
        owners = pipe.execute()
        found: list[Job] = []
        gone: list[str] = []
        superseded: list[Job] = []
        for job_id, raw, owner in zip(job_ids, records, owners, strict=True):
            if not (raw.get("job_id") and raw.get("state") == JobState.FAILED.value):
                gone.append(job_id)
            elif raw.get("music_task_id") and owner and owner != job_id:
                superseded.append(Job.from_hash(raw))
            else:
                found.append(Job.from_hash(raw))
        if gone:
            self.redis.zrem(index, *gone)
        for job in superseded:
            self._unindex(job)
        return found

    def newest(self, kind: str | None = None, code: int | str | None = None,
               limit: int = 100, offset: int = 0, since: float | None = None,
               until: float | None = None) -> list[Job]:
        """Failed jobs, newest failure first.

        Args:
            kind: only this error kind (e.g. ``upstream``).
            code: only this API code (e.g. 500); ``"none"`` for failures without one.
            limit: at most this many (default 100).
            offset: skip this many of the newest first.
            since: only failures at or after this unix time (seconds; default any).
            until: only failures at or before this unix time (seconds; default any).
        """
        index = index_key(kind, code)
        self._prune(index)
        low, high = _bounds(since, until)
        out: list[Job] = []
        start = offset
        page = max(limit, PAGE)
        while len(out) < limit:
            ids = [str(i) for i in self.redis.zrevrangebyscore(index, high, low, start=start,
                                                               num=page)]
            if not ids:
                break
            start += len(ids)
            for job in self.failed_jobs(ids, index):
                if kind and code is not None and str((job.error or {}).get("code")) != str(code):
                    continue
                out.append(job)
                if len(out) >= limit:
                    break
        return out

    def count(self, kind: str | None = None, code: int | str | None = None,
              since: float | None = None, until: float | None = None) -> int:
        """How many failures are indexed (of a kind, or a code, or both; in a time
        range, unix seconds, as `newest`): at most one per music task."""
        if kind and code is not None:
            return len(self.newest(kind, code, limit=10**9, since=since, until=until))
        index = index_key(kind, code)
        self._prune(index)
        return int(self.redis.zcount(index, *_bounds(since, until)))

    def requeue(self, job_id: str, lease_s: float) -> str:
        """Queue a failed job again under its own id (failed -> queued, one script).

        Its record is reset (`kie_covers.store.record.RETRY_RESETS`), it leaves the
        index and goes in the job due set `lease_s` seconds ahead (the caller sends
        its message now; the lease covers a send that is lost).

        Returns:
            ``ok``, or why not: ``not_failed`` (queued, running or succeeded),
            ``unknown`` (no record), ``superseded`` (its music task has a newer job:
            a live or succeeded one, where a retry would pay twice, or a failed one,
            which is the music task's failure row and the one to retry),
            ``invalid_payload`` (a refused raw message: nothing to retry).
        """
        now = time.time()
        return str(self._retry(
            keys=[keys.job(job_id), keys.FAILURES, keys.RETRY_DUE, Due.JOBS.key],
            args=[job_id, repr(now), due_ms(lease_s, now), keys.job(""), keys.music(""),
                  keys.failures_by_kind(""), keys.failures_by_code(""),
                  keys.state_index(""), keys.waiting(""), *flat(RETRY_RESETS)],
        ))

    def forget(self, job: Job) -> None:
        """Delete a failed job's record and every index entry of it (the overview's
        state and wait indexes too)."""
        self._unindex(job, delete_record=True)
        if job.music_task_id and self.redis.get(keys.music(job.music_task_id)) == job.job_id:
            self.redis.delete(keys.music(job.music_task_id))

    def _unindex(self, job: Job, delete_record: bool = False) -> None:
        """Take a failed job out of every index (and off the retry schedule)."""
        error = job.error or {}
        pipe = self.redis.pipeline()
        if delete_record:
            pipe.delete(keys.job(job.job_id), keys.history(job.job_id))
            for state in JobState:
                pipe.zrem(keys.state_index(state.value), job.job_id)
            if job.wait_reason is not None:
                pipe.zrem(keys.waiting(job.wait_reason.value), job.job_id)
        pipe.zrem(keys.FAILURES, job.job_id)
        pipe.zrem(keys.failures_by_kind(str(error.get("kind"))), job.job_id)
        pipe.zrem(keys.failures_by_code(error.get("code")), job.job_id)
        pipe.zrem(keys.RETRY_DUE, job.job_id)
        pipe.execute()

    # --- the schedule of automatic retries ------------------------------------------

    def take_round(self, interval_s: float) -> bool:
        """Take the lock of one scheduled retry round for most of `interval_s` seconds.

        Never released early: a second beat process (started by mistake) finds it
        taken and skips its round.
        """
        lock_ms = int(max(0.2, interval_s * 0.8) * 1000)
        return bool(self.redis.set(keys.RETRY_ROUND_LOCK, "1", nx=True, px=lock_ms))

    def due_for_retry(self, now: float, limit: int = 1000) -> list[Job]:
        """Failed jobs whose scheduled retry time has come (at most `limit`)."""
        ids = [str(i) for i in self.redis.zrangebyscore(
            keys.RETRY_DUE, "-inf", int(now * 1000), start=0, num=limit)]
        return self.failed_jobs(ids, keys.RETRY_DUE)

    def unschedule(self, job_id: str) -> None:
        """Take a job off the schedule of automatic retries."""
        self.redis.zrem(keys.RETRY_DUE, job_id)
