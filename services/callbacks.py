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
from kie_covers.runtime.kie_client import get_masker
from kie_covers.services.endings import job_ended
from kie_covers.store.jobs import EARLY_CAP_BYTES, JobStore
from kie_covers.store.record import Job

log = logging.getLogger("covers.callbacks")


class CallbackResult(StrEnum):
    """What a callback did."""

    COMPLETED = "completed"  #: it ended its job
    DUPLICATE = "duplicate"  #: its job had already ended
    UNKNOWN = "unknown"  #: no job owns that cover task id (kept briefly, then ignored)
    MISMATCH = "mismatch"  #: the cover is not the job's its URL names (nothing changed)
    FULL = "full"  #: it would have been kept, but the early-callback cap is reached


def apply_callback(store: JobStore, body: Any, early_ttl_s: float, *, job_id: str = "",
                   early_cap_bytes: int = EARLY_CAP_BYTES) -> CallbackResult:
    """End the job a callback body belongs to. Raises `InvalidPayload` if malformed.

    Args:
        store: the job store.
        body: the decoded JSON body.
        early_ttl_s: seconds to keep a callback whose cover task id no job owns yet
            (it may have come before the submit's answer was recorded).
        job_id: the job the callback's URL names (its token already checked); the
            cover must be that job's. "" accepts any job (no URL token in use).
        early_cap_bytes: most bytes of such kept callbacks in all (default 1,000,000,
            as COVERS_EARLY_CALLBACK_BYTES).
    """
    outcome = interpret_callback(body)
    # Kie's text is stored from here on: our secrets leave it first (masking at the source).
    error = outcome.error.masked(get_masker()) if outcome.error is not None else None
    job = store.finish_by_cover(outcome.cover_task_id, json.dumps(body), early_ttl_s,
                                images=outcome.images, error=error,
                                job_id=job_id, early_cap_bytes=early_cap_bytes)
    if job == "unknown":
        log.info("callback for unknown cover task %s kept for %.0fs",
                 outcome.cover_task_id, early_ttl_s)
        return CallbackResult.UNKNOWN
    if job == "mismatch":
        log.warning("callback for cover %s refused: not the cover of job %s",
                    outcome.cover_task_id, job_id)
        return CallbackResult.MISMATCH
    if job == "full":
        log.warning("callback for unknown cover task %s not kept: early callbacks hold "
                    "%d bytes already", outcome.cover_task_id, early_cap_bytes)
        return CallbackResult.FULL
    if not isinstance(job, Job):
        log.info("duplicate callback for cover %s", outcome.cover_task_id)
        return CallbackResult.DUPLICATE
    ended_id = job.job_id
    state = job.state.value
    job_ended(store, job, via="callback")
    log.info("job %s %s by callback (cover %s)", ended_id, state, outcome.cover_task_id,
             extra=job.log_fields(state))
    return CallbackResult.COMPLETED
