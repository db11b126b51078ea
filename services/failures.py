"""The failure store: what failed, why, and trying again.

Failed jobs keep their record (`kie_covers.store`) for ``COVERS_FAILURE_TTL``
seconds, far longer than successes. `JobStore.finish` indexes each failure once
in sorted sets (all, by kind, by code; see `kie_covers.store.failures`), so
listing newest first, filtering and counting never scan Redis.

A music task has at most one failure row, its newest job's: when a music task
whose job failed gets a new job (`enqueue_cover`, a batch run again), the old
job leaves the index in the same Redis step; its record stays readable by job
id until it expires. So `list_failures`, `count_failures`, retry rounds and
`forget_jobs` see one row per music task.

Retrying keeps the job id, so ``get_cover`` and ``AsyncResult`` follow the
job. A retry is one Lua compare-and-set (failed → queued), so two beat
processes, or a person and the beat, cannot retry a job twice; and a job whose
music task has since got another job is never retried (`superseded`: a live or
succeeded one would make it pay twice; a failed one is the row to retry).

Python API for an app's admin page: `list_failures`, `count_failures`,
`retry_jobs`, `retry_where`, `forget_jobs`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from kie_covers.config import get_settings
from kie_covers.core.states import CeleryState, JobState
from kie_covers.runtime.app import app
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.messages import send_job
from kie_covers.runtime.task_view import announce_retry
from kie_covers.store.history import event

log = logging.getLogger("covers.failures")


@dataclass(frozen=True)
class RetryOutcome:
    """What happened to one retry request: ``ok``, or why not.

    ``not_failed`` (it is queued, running or succeeded), ``unknown`` (no record),
    ``superseded`` (its music task has a newer job: retry that one, if failed),
    ``invalid_payload`` (a refused raw message: nothing to retry).
    """

    job_id: str
    result: str


def list_failures(kind: str | None = None, code: int | str | None = None,
                  limit: int = 100, offset: int = 0, since: float | None = None,
                  until: float | None = None) -> list[dict[str, Any]]:
    """Failed jobs, newest failure first, as `get_cover` dicts.

    Args:
        kind: only this error kind (e.g. ``upstream``, ``not_found``).
        code: only this API code (e.g. 500); ``"none"`` for failures without one.
        limit: at most this many (default 100).
        offset: skip this many of the newest first.
        since: only failures (last failed) at or after this unix time, in seconds.
        until: only failures (last failed) at or before this unix time, in seconds.
    """
    jobs = get_store().failures.newest(kind, code, limit, offset, since=since, until=until)
    return [job.to_dict() for job in jobs]


def count_failures(kind: str | None = None, code: int | str | None = None,
                   since: float | None = None, until: float | None = None) -> int:
    """How many failures are listed (of a kind, or a code, in a time range): at most one
    per music task, as `list_failures` shows them."""
    return get_store().failures.count(kind, code, since=since, until=until)


def retry_jobs(job_ids: list[str], by: str = "operator") -> list[RetryOutcome]:
    """Queue failed jobs again under their own job ids.

    Args:
        by: who asked, for the job's timeline (``operator``, ``schedule``,
            ``console``, ``api``).
    """
    store = get_store()
    lease = get_settings().redispatch_after
    outcomes: list[RetryOutcome] = []
    for job_id in job_ids:
        result = store.failures.requeue(job_id, lease)
        if result == "ok":
            job = store.get(job_id)
            if job is not None:
                store.history.add(job_id, event("retried", round=job.retry_rounds, by=by))
                # Celery users see the job waiting again, not its old failure.
                app.backend.store_result(job_id, job.to_dict(), CeleryState.WAITING.value)
                announce_retry(job)  # and Flower sees its task retried, not FAILURE
                send_job(job.job_id, job.music_task_id, job.callback_url, job.queue or None)
                log.info("job %s (music %s) queued again, round %d", job_id,
                         job.music_task_id, job.retry_rounds)
        outcomes.append(RetryOutcome(job_id, result))
    return outcomes


def retry_where(kind: str | None = None, code: int | str | None = None,
                retryable_only: bool = True, by: str = "operator") -> list[RetryOutcome]:
    """Retry every recorded failure of a kind or code (or all), by default only retryable
    ones (`by`: as `retry_jobs`)."""
    jobs = get_store().failures.newest(kind, code, limit=10**9)
    return retry_jobs([job.job_id for job in jobs
                       if not retryable_only or (job.error or {}).get("retryable")], by=by)


def forget_jobs(job_ids: list[str]) -> int:
    """Delete failed jobs' records and index entries; returns how many were removed."""
    store = get_store()
    removed = 0
    for job_id in job_ids:
        job = store.get(job_id)
        if job is None or job.state is not JobState.FAILED:
            continue
        store.failures.forget(job)
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
    failures = get_store().failures
    counts = {"retried": 0, "expired": 0, "skipped": 0}
    if not failures.take_round(settings.retry_interval if interval_s is None else interval_s):
        return counts
    now = time.time() if now is None else now
    ready: list[str] = []
    for job in failures.due_for_retry(now):
        if now - (job.first_failed_at or now) > settings.retry_max_age:
            failures.unschedule(job.job_id)
            counts["expired"] += 1
        else:
            ready.append(job.job_id)
    for outcome in retry_jobs(ready, by="schedule"):
        counts["retried" if outcome.result == "ok" else "skipped"] += 1
        if outcome.result != "ok":
            failures.unschedule(outcome.job_id)
    if any(counts.values()):
        log.info("retry round: %s", json.dumps(counts))
    return counts
