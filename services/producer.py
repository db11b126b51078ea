"""The producer API: what a web app calls.

    from kie_covers import enqueue_cover, get_cover
    job_id = enqueue_cover("73d6128b3523a0079df10da9471017c8", "https://app.example/cb")
    get_cover(job_id)["state"]   # "queued" → "submitted" → "succeeded" / "failed"

The job id is a Celery task id: ``AsyncResult(job_id).get()`` returns the same
dict as `get_cover` once the job succeeded, or raises its `kie_covers.core.errors`
error.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from typing import Any

from kie_covers.config import get_settings
from kie_covers.core.errors import BadArgument, StoreFull, UnknownJob
from kie_covers.core.schemas import validate_cover_request
from kie_covers.core.states import JobState
from kie_covers.runtime.connections import get_limiters, get_store
from kie_covers.runtime.full_redis import is_redis_full
from kie_covers.runtime.messages import send_job
from kie_covers.store.due import Due
from kie_covers.store.history import event
from kie_covers.store.jobs import JobStore
from kie_covers.store.limiter import Place


def enqueue_cover(music_task_id: str, callback_url: str, *, queue: str | None = None,
                  priority: str = "interactive", tenant: str | None = None) -> str:
    """Queue a cover job for music task `music_task_id`; returns its job id at once.

    Raises `kie_covers.core.errors.InvalidPayload` (naming each bad field) and
    queues nothing when the input is invalid. Idempotent per music task: while a
    job for `music_task_id` is queued, submitted or succeeded, its id is returned
    and nothing new is queued. After a failure, a new job is made.

    Args:
        music_task_id: the music task id Kie gave for the song (1 to 128 characters).
        callback_url: absolute http(s) URL of the calling app (at most 2048 chars).
        queue: Celery queue for every run of this job (default: COVERS_QUEUE).
        priority: the rate limit's lane, ``interactive`` (the default: served first)
            or ``bulk`` (gets at least COVERS_BULK_MIN_SHARE of the slots while
            interactive jobs wait).
        tenant: the app's user or organisation the job is for, 1 to 64 characters
            of letters, digits and ``. _ : @ -`` (starting with a letter or digit);
            within a lane, tenants take turns. Default None: the default tenant.

    An idempotent repeat returns the existing job as it is (its priority and tenant
    are not changed).

    Raises `kie_covers.core.errors.StoreFull` when Redis refuses the write because it
    reached ``maxmemory``: call again once it has room. If the job was recorded but
    its message could not be sent, it is made due at once and a worker's dispatcher
    sends it; a repeat returns the same job id.
    """
    request = validate_cover_request({"taskId": music_task_id, "callBackUrl": callback_url,
                                      "priority": priority, "tenant": tenant})
    settings = get_settings()
    queue = queue or settings.queue
    store = get_store()
    # One Redis step: the record, its timeline's first entry, and its place in the
    # generate limiter's fair order. Its message goes now only if its turn has come; else
    # a dispatcher sends it when it is granted (a batch waits in Redis, not as thousands
    # of messages in the broker).
    place = Place(request["priority"], request["tenant"], int(time.time() * 1_000_000))
    try:
        job_id, send_now = store.enqueue_and_admit(
            str(uuid.uuid4()), request["taskId"], request["callBackUrl"],
            settings.redispatch_after, queue, request["priority"], request["tenant"],
            admission=get_limiters().generate.admission(place),
            timeline=event("enqueued", queue=queue, priority=request["priority"]))
        if send_now:
            _send_first(store, job_id, request["taskId"], request["callBackUrl"], queue)
    except Exception as error:
        if is_redis_full(error):
            raise StoreFull(f"Redis is full (maxmemory reached): the cover for music task "
                            f"{request['taskId']!r} could not be queued; call again once "
                            "Redis has room (a repeat returns the same job)") from error
        raise
    return job_id


def _send_first(store: JobStore, job_id: str, music_task_id: str, callback_url: str,
                queue: str) -> None:
    """Send a new job's first message; if that fails (broker down, connection cut),
    make the job due at once so a worker's dispatcher sends it within a second instead
    of after COVERS_REDISPATCH_AFTER (a repeated `enqueue_cover` returns the job and
    sends nothing), then raise. Best effort: with Redis out of reach too, the lease
    remains."""
    try:
        send_job(job_id, music_task_id, callback_url, queue=queue)
    except Exception:
        with contextlib.suppress(Exception):
            store.due.later(Due.JOBS, job_id, 0)
        raise


def get_cover(job_id: str) -> dict[str, Any]:
    """The job's record, JSON-ready (`kie_covers.store.record.Job.to_dict`).

    Keys: ``job_id``; ``music_task_id``; ``callback_url``; ``state`` (queued,
    submitted, succeeded, failed); ``priority`` (``interactive`` or ``bulk``);
    ``tenant`` (None for the default tenant); ``cover_task_id`` (Kie's, once submitted);
    ``images`` (Kie's image URLs); ``error`` (code, kind, message, retryable; None
    unless failed); ``attempts`` (generate calls); ``polls`` (record-info calls);
    ``waiting_for`` (why it waits, if it does: a `WaitReason`); the ISO 8601 UTC
    times ``created_at``, ``updated_at``, ``submitted_at``, ``finished_at``,
    ``first_failed_at``, ``last_failed_at``; ``retry_rounds`` (times a failure was
    queued again); ``notified_at`` and ``notice_error`` (the app's outcome notice);
    ``stored_images`` and ``images_error`` (copies in COVERS_IMAGE_STORE).

    Raises `kie_covers.core.errors.UnknownJob` when no such job is recorded.
    """
    job = get_store().get(str(job_id))
    if job is None:
        raise UnknownJob(f"no cover job {job_id!r} (never enqueued, or expired)")
    return job.to_dict()


def wait_for_cover(job_id: str, timeout_s: float = 300.0, interval_s: float = 0.2
                   ) -> dict[str, Any]:
    """Block until the job ends (or `timeout_s` seconds pass); returns `get_cover`.

    Args:
        timeout_s: seconds to wait at most (default 300); finite, at least 0.
        interval_s: seconds between reads (default 0.2); finite, greater than 0.

    Raises:
        BadArgument: a wait that is not a finite number (``nan`` would never end).
    """
    if not (math.isfinite(timeout_s) and timeout_s >= 0):
        raise BadArgument(f"timeout_s must be a finite number of seconds >= 0, got {timeout_s!r}")
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise BadArgument(f"interval_s must be a finite number of seconds > 0, got {interval_s!r}")
    deadline = time.monotonic() + timeout_s
    while True:
        record = get_cover(job_id)
        if JobState(record["state"]).final or time.monotonic() >= deadline:
            return record
        time.sleep(interval_s)
