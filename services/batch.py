"""Batch enqueueing: many cover requests from one CSV or JSON-lines file.

    from kie_covers.services.batch import batch_progress, enqueue_batch, read_batch

    plan = read_batch("songs.csv", default_callback_url="https://app.example/cb")
    for bad in plan.bad:                      # every bad line, with its line number
        print(bad.line_no, bad.message)
    job_ids = enqueue_batch(plan)             # refuses the whole batch if any line is bad
    batch_progress(job_ids).done              # succeeded so far

Reading and enqueueing are separate steps so a caller can show every bad line
before anything is queued. Reading and validating (`read_batch` and its
`BatchPlan`, `BatchRow`, `BadLine`, `BatchRefused`) is pure and lives in
`kie_covers.core.batch`, which also describes the input formats; the names are
re-exported here. `enqueue_batch` is all-or-nothing about *bad input* (one bad
line and nothing is queued unless ``skip_bad``), and safe to run again for the
same file: `enqueue_cover` is idempotent per music task, so a second run returns
the same job ids and pays for nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kie_covers.core.batch import (
    CSV_COLUMNS,
    SUFFIX_FORMATS,
    BadLine,
    BatchFormat,
    BatchPlan,
    BatchRefused,
    BatchRow,
    read_batch,
)
from kie_covers.core.schemas import BULK, validate_lane
from kie_covers.core.states import HELD_BACK, JobState
from kie_covers.runtime.connections import get_store
from kie_covers.services.producer import enqueue_cover

__all__ = ["CSV_COLUMNS", "SUFFIX_FORMATS", "BadLine", "BatchFormat",
           "BatchPlan", "BatchRefused", "BatchRow", "Progress", "batch_progress",
           "batch_records", "enqueue_batch", "enqueued_lines", "read_batch"]

#: The two fields `batch_progress` reads of each job.
PROGRESS_FIELDS = ("state", "wait_reason")


@dataclass(frozen=True)
class Progress:
    """How far a batch of jobs has got (one Redis read of every job's state).

    Attributes:
        total: job ids asked about (each id counts once per time it is given).
        done: succeeded.
        failed: failed (for good, until a retry queues them again).
        waiting: queued and held back by the rate limit, a pause or a credit hold
            (a wait reason in `kie_covers.core.states.HELD_BACK`).
        in_progress: every other live job: queued, backing off after a fault, or
            submitted to Kie and waiting for the cover.
        missing: no record (never enqueued here, or expired after its TTL); default 0.
        failed_ids: the failed job ids, in the order given; default none.
        waiting_for: wait reason (its value, e.g. ``"rate_slot"``) -> jobs waiting for
            it; default empty.
    """

    total: int
    done: int
    failed: int
    waiting: int
    in_progress: int
    missing: int = 0
    failed_ids: tuple[str, ...] = ()
    waiting_for: dict[str, int] = field(default_factory=dict)

    @property
    def ended(self) -> int:
        """Jobs that will not change by themselves any more: done, failed or missing."""
        return self.done + self.failed + self.missing

    @property
    def finished(self) -> bool:
        """True when every job has ended."""
        return self.ended >= self.total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts (without the failed ids)."""
        return {"total": self.total, "done": self.done, "failed": self.failed,
                "waiting": self.waiting, "in_progress": self.in_progress,
                "missing": self.missing, "waiting_for": dict(self.waiting_for)}


def enqueue_batch(plan: BatchPlan, *, skip_bad: bool = False, queue: str | None = None,
                  priority: str = BULK, tenant: str | None = None) -> list[str]:
    """Queue a cover job for every row of `plan`; returns the job ids in file order.

    Args:
        plan: what `read_batch` returned.
        skip_bad: enqueue the good rows even when some lines are bad (default False:
            refuse the whole batch).
        queue: Celery queue for every job (default None: COVERS_QUEUE).
        priority: the lane of every row that names none (default ``bulk``; see
            `enqueue_cover`).
        tenant: the tenant of every row that names none (default None: the default
            tenant).

    Raises:
        BatchRefused: `plan` has bad lines and `skip_bad` is False. Nothing is
            enqueued; ``.bad_lines`` lists them.
        InvalidPayload: `priority` or `tenant` is invalid (naming it); nothing is
            enqueued.

    Each row goes through `kie_covers.services.producer.enqueue_cover`, which is
    idempotent per music task: running the same batch again returns the same job ids
    for jobs queued, submitted or succeeded, and queues new jobs only for failed ones.
    So if this stops half-way (Redis unreachable, say), running it again is the fix.
    """
    priority, tenant = validate_lane(priority, tenant)
    if plan.bad and not skip_bad:
        raise BatchRefused.from_bad_lines(plan.bad, plan.source)
    return [enqueue_cover(row.music_task_id, row.callback_url, queue=queue,
                          priority=row.priority or priority,
                          tenant=row.tenant if row.tenant is not None else tenant)
            for row in plan.rows]


def enqueued_lines(plan: BatchPlan, job_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Each enqueued line with its job, in file order (JSON-ready).

    ``[{"line": 2, "taskId": "<music task id>", "job_id": "<job id>"}, ...]``: `line`
    is the physical line (1-based), `taskId` the line's music task id.

    Args:
        plan: the plan given to `enqueue_batch`.
        job_ids: what `enqueue_batch` returned for it (one per row of `plan`).
    """
    return [{"line": row.line_no, "taskId": row.music_task_id, "job_id": job_id}
            for row, job_id in zip(plan.rows, job_ids, strict=True)]


def batch_progress(job_ids: Sequence[str]) -> Progress:
    """Count the jobs' states, reading two short fields per job (no full records).

    Cheap enough to call several times a second for a batch of 10,000 jobs: one
    pipelined round trip per `kie_covers.store.jobs.FETCH_CHUNK` jobs
    (`JobStore.fetch_many`).

    Args:
        job_ids: the ids `enqueue_batch` returned (or any job ids).
    """
    done = failed = waiting = in_progress = missing = 0
    failed_ids: list[str] = []
    waiting_for: dict[str, int] = {}
    jobs = get_store().fetch_many(job_ids, fields=PROGRESS_FIELDS)
    for job_id, job in zip(job_ids, jobs, strict=True):
        if job is None:
            missing += 1
        elif job.state is JobState.SUCCEEDED:
            done += 1
        elif job.state is JobState.FAILED:
            failed += 1
            failed_ids.append(job_id)
        elif job.state is JobState.QUEUED and job.wait_reason in HELD_BACK:
            waiting += 1
            reason = str(job.wait_reason)
            waiting_for[reason] = waiting_for.get(reason, 0) + 1
        else:
            in_progress += 1
    return Progress(total=len(job_ids), done=done, failed=failed, waiting=waiting,
                    in_progress=in_progress, missing=missing, failed_ids=tuple(failed_ids),
                    waiting_for=waiting_for)


def batch_records(job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """Every job's `get_cover` record (None where there is none), in the order given.

    For the end of a batch (``--json``, the failed-jobs table): pipelined by
    `JobStore.fetch_many`, one round trip per `kie_covers.store.jobs.FETCH_CHUNK`
    jobs instead of one per job.
    """
    return [job.to_dict() if job is not None else None
            for job in get_store().fetch_many(job_ids)]
