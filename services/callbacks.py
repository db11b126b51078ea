"""Completing a job from a Kie callback, exactly once.

Used by the web endpoint (`kie_covers.worker.web`). The job record's end is one Lua
compare-and-set (`JobStore.finish`); only the caller that wins writes the
Celery result (`kie_covers.services.endings.job_ended`), so a duplicated callback, or a
callback racing a poll, ends the job once.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Any

from kie_covers.core.answers import interpret_callback
from kie_covers.services.endings import job_ended
from kie_covers.store.jobs import JobStore
from kie_covers.store.record import Job

log = logging.getLogger("covers.callbacks")


class CallbackResult(StrEnum):
    """What a callback did."""

    COMPLETED = "completed"  #: it ended its job
    DUPLICATE = "duplicate"  #: its job had already ended
    UNKNOWN = "unknown"  #: no job owns that cover task id (kept briefly, then ignored)


def apply_callback(store: JobStore, body: Any, early_ttl_s: float) -> CallbackResult:
    """End the job a callback body belongs to. Raises `InvalidPayload` if malformed.

    Args:
        store: the job store.
        body: the decoded JSON body.
        early_ttl_s: seconds to keep a callback whose cover task id no job owns yet
            (it may have come before the submit's answer was recorded).
    """
    outcome = interpret_callback(body)
    job = store.finish_by_cover(outcome.cover_task_id, json.dumps(body), early_ttl_s,
                                images=outcome.images, error=outcome.error)
    if job == "unknown":
        log.info("callback for unknown cover task %s kept for %.0fs",
                 outcome.cover_task_id, early_ttl_s)
        return CallbackResult.UNKNOWN
    if not isinstance(job, Job):
        log.info("duplicate callback for cover %s", outcome.cover_task_id)
        return CallbackResult.DUPLICATE
    job_id = job.job_id
    state = job.state.value
    job_ended(store, job)
    log.info("job %s %s by callback (cover %s)", job_id, state, outcome.cover_task_id,
             extra=job.log_fields(state))
    return CallbackResult.COMPLETED
