"""The failure store: what failed, why, and trying again.

Failed jobs keep their record (`tasks.jobs`) for ``COVERS_FAILURE_TTL``
seconds, far longer than successes. `JobStore.finish` indexes each failure once
in sorted sets (all, by kind, by code; see `config.keys`), so listing newest
first, filtering and counting never scan Redis.

Retrying keeps the job id, so ``get_cover`` and ``AsyncResult`` follow the
job. A retry is one Lua compare-and-set (failed → queued), so two beat
processes, or a person and the beat, cannot retry a job twice; and a job whose
music task has since got another live or succeeded job is never retried (it
would pay twice).

Python API for an app's admin page: `list_failures`, `count_failures`,
`retry_jobs`, `retry_where`, `forget_jobs`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from kie_covers.config import get_settings, keys
from kie_covers.runtime.app import app
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.messages import send_job
from kie_covers.store.jobs import Job, JobStore

log = logging.getLogger("covers.failures")

_RETRY = """
-- KEYS 1 job, 2 failures, 3 retry-due, 4 due; ARGV 1 job id, 2 now s, 3 due ms,
-- 4 job prefix, 5 music prefix, 6 kind prefix, 7 code prefix
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'failed' then return state and 'not_failed' or 'unknown' end
local task_id = redis.call('HGET', KEYS[1], 'task_id')
if task_id == nil or task_id == false or task_id == '' then return 'invalid_payload' end
local music = ARGV[5] .. task_id
local owner = redis.call('GET', music)
if owner and owner ~= ARGV[1] then
  local other = redis.call('HGET', ARGV[4] .. owner, 'state')
  if other and other ~= 'failed' then return 'superseded' end
end
local err = redis.call('HGET', KEYS[1], 'error')
local kind, code = 'error', 'none'
if err and err ~= '' then
  local decoded = cjson.decode(err)
  kind = decoded['kind'] or kind
  if decoded['code'] and decoded['code'] ~= cjson.null then code = tostring(decoded['code']) end
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'error', '', 'wait_reason', '', 'faults', 0,
           'retries', 0, 'updated_at', ARGV[2], 'cover_task_id', '', 'images', '')
redis.call('HDEL', KEYS[1], 'finished_at', 'hold_since', 'submitted_at', 'notified_at',
           'notice_error', 'notice_attempts')
redis.call('HINCRBY', KEYS[1], 'retry_rounds', 1)
redis.call('PERSIST', KEYS[1])
redis.call('SET', music, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[6] .. kind, ARGV[1])
redis.call('ZREM', ARGV[7] .. code, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 'ok'
"""


@dataclass(frozen=True)
class RetryOutcome:
    """What happened to one retry request: ``ok``, or why not.

    ``not_failed`` (it is queued, running or succeeded), ``unknown`` (no record),
    ``superseded`` (its music task has another live or succeeded job),
    ``invalid_payload`` (a refused raw message: nothing to retry).
    """

    job_id: str
    result: str


def _index(kind: str | None, code: int | str | None) -> str:
    if kind:
        return keys.failures_by_kind(kind)
    if code is not None:
        return keys.failures_by_code(code)
    return keys.FAILURES


def _prune(store: JobStore, index: str) -> None:
    cutoff_ms = int((time.time() - store.failure_ttl_s) * 1000)
    store.redis.zremrangebyscore(index, "-inf", cutoff_ms)


def _jobs(store: JobStore, job_ids: list[str], index: str) -> list[Job]:
    pipe = store.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(keys.job(job_id))
    found: list[Job] = []
    gone: list[str] = []
    for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
        if raw.get("job_id") and raw.get("state") == "failed":
            found.append(Job.from_hash(raw))
        else:
            gone.append(job_id)
    if gone:  # expired or retried since: tidy the index as we go
        store.redis.zrem(index, *gone)
    return found


def list_failures(kind: str | None = None, code: int | str | None = None,
                  limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Failed jobs, newest failure first, as `get_cover` dicts.

    Args:
        kind: only this error kind (e.g. ``upstream``, ``not_found``).
        code: only this API code (e.g. 500); ``"none"`` for failures without one.
        limit: at most this many (default 100).
        offset: skip this many of the newest first.
    """
    store = get_store()
    index = _index(kind, code)
    _prune(store, index)
    out: list[dict[str, Any]] = []
    start = offset
    batch = max(limit, 100)
    while len(out) < limit:
        ids = [str(i) for i in store.redis.zrevrange(index, start, start + batch - 1)]
        if not ids:
            break
        start += len(ids)
        for job in _jobs(store, ids, index):
            if kind and code is not None and str((job.error or {}).get("code")) != str(code):
                continue
            out.append(job.to_dict())
            if len(out) >= limit:
                break
    return out


def count_failures(kind: str | None = None, code: int | str | None = None) -> int:
    """How many failed jobs are recorded (of a kind, or a code)."""
    store = get_store()
    index = _index(kind, code)
    _prune(store, index)
    if kind and code is not None:
        return len(list_failures(kind, code, limit=10**9))
    return int(store.redis.zcard(index))


def retry_jobs(job_ids: list[str]) -> list[RetryOutcome]:
    """Queue failed jobs again under their own job ids."""
    store = get_store()
    settings = get_settings()
    script = store.redis.register_script(_RETRY)
    outcomes: list[RetryOutcome] = []
    for job_id in job_ids:
        now = time.time()
        result = str(script(
            keys=[keys.job(job_id), keys.FAILURES, keys.RETRY_DUE, keys.DUE],
            args=[job_id, repr(now), int((now + settings.redispatch_after) * 1000),
                  keys.job(""), keys.music(""), keys.failures_by_kind(""),
                  keys.failures_by_code("")],
        ))
        if result == "ok":
            job = store.get(job_id)
            if job is not None:
                # Celery users see the job waiting again, not its old failure.
                app.backend.store_result(job_id, job.to_dict(), "WAITING")
                send_job(job.job_id, job.task_id, job.callback_url, job.queue or None)
                log.info("job %s (music %s) queued again, round %d", job_id, job.task_id,
                         job.retry_rounds)
        outcomes.append(RetryOutcome(job_id, result))
    return outcomes


def retry_where(kind: str | None = None, code: int | str | None = None,
                retryable_only: bool = True) -> list[RetryOutcome]:
    """Retry every recorded failure of a kind or code (or all), by default only retryable ones."""
    records = list_failures(kind, code, limit=10**9)
    ids = [r["job_id"] for r in records if not retryable_only or (r["error"] or {}).get(
        "retryable")]
    return retry_jobs(ids)


def forget_jobs(job_ids: list[str]) -> int:
    """Delete failed jobs' records and index entries; returns how many were removed."""
    store = get_store()
    removed = 0
    for job_id in job_ids:
        job = store.get(job_id)
        if job is None or job.state.value != "failed":
            continue
        error = job.error or {}
        pipe = store.redis.pipeline()
        pipe.delete(keys.job(job_id))
        pipe.zrem(keys.FAILURES, job_id)
        pipe.zrem(keys.failures_by_kind(str(error.get("kind"))), job_id)
        pipe.zrem(keys.failures_by_code(error.get("code")), job_id)
        pipe.zrem(keys.RETRY_DUE, job_id)
        pipe.execute()
        if job.task_id and store.redis.get(keys.music(job.task_id)) == job_id:
            store.redis.delete(keys.music(job.task_id))
        app.backend.forget(job_id)
        removed += 1
    return removed


def run_retry_round(now: float | None = None, interval_s: float | None = None
                    ) -> dict[str, int]:
    """One scheduled round: retry the retryable failures whose time has come.

    Failures first seen more than COVERS_RETRY_MAX_AGE seconds ago are left alone
    (taken off the schedule). A lock keeps two beat processes from running rounds
    at once; the per-job compare-and-set keeps any job from being retried twice.

    Args:
        interval_s: seconds between the beat's rounds (default: this process's
            COVERS_RETRY_INTERVAL). The beat sends its own, as the worker running the
            round may be configured differently.

    Returns:
        Counts: ``retried``, ``expired`` (too old), ``skipped`` (not retryable any more).
    """
    settings = get_settings()
    interval = settings.retry_interval if interval_s is None else interval_s
    store = get_store()
    counts = {"retried": 0, "expired": 0, "skipped": 0}
    # Held for most of an interval and never released early: a second beat process
    # (started by mistake) finds it taken and skips its round.
    lock_ms = int(max(0.2, interval * 0.8) * 1000)
    if not store.redis.set(keys.RETRY_ROUND_LOCK, "1", nx=True, px=lock_ms):
        return counts
    now = time.time() if now is None else now
    due = [str(i) for i in store.redis.zrangebyscore(
        keys.RETRY_DUE, "-inf", int(now * 1000), start=0, num=1000)]
    ready: list[str] = []
    for job in _jobs(store, due, keys.RETRY_DUE):
        if now - (job.first_failed_at or now) > settings.retry_max_age:
            store.redis.zrem(keys.RETRY_DUE, job.job_id)
            counts["expired"] += 1
        else:
            ready.append(job.job_id)
    for outcome in retry_jobs(ready):
        counts["retried" if outcome.result == "ok" else "skipped"] += 1
        if outcome.result != "ok":
            store.redis.zrem(keys.RETRY_DUE, outcome.job_id)
    if any(counts.values()):
        log.info("retry round: %s", json.dumps(counts))
    return counts
