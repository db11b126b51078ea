"""What happens once a job has ended, whoever ended it (worker or callback endpoint)."""

from __future__ import annotations

import logging
from typing import Any

from celery import states

from kie_covers.config import get_settings
from kie_covers.core import errors
from kie_covers.core.states import JobState
from kie_covers.runtime.app import app
from kie_covers.runtime.signals import cover_finished
from kie_covers.runtime.task_view import announce_end
from kie_covers.services.images import schedule_images
from kie_covers.services.notify import deliver_soon
from kie_covers.store.history import event
from kie_covers.store.jobs import JobStore
from kie_covers.store.record import Job

log = logging.getLogger("covers.endings")


def record_result(job: Job, record: dict[str, Any]) -> None:
    """Write an ended job's outcome to Celery's result backend.

    Args:
        record: ``job.to_dict()``, made once by the caller for every use.
    """
    # The result backend is always Redis (runtime/celeryconfig.py), a key-value backend.
    backend = app.backend
    # Celery's store_result first reads the stored state, never to overwrite a SUCCESS.
    # A job's end is decided once (JobStore.finish), so that read, one more round trip
    # per job, is skipped: the same meta is written directly.
    if job.error is not None:
        state, result = states.FAILURE, backend.prepare_exception(errors.from_dict(job.error))
    else:
        state, result = states.SUCCESS, backend.prepare_value(record)
    meta = {"status": state, "result": result, "traceback": None, "children": [],
            "date_done": app.now().isoformat(), "task_id": job.job_id}
    key = backend.get_key_for_task(job.job_id)
    backend.set(key, backend.encode(meta))  # expires after COVERS_RESULT_TTL (Celery's own)
    if job.error is not None:
        # One lifetime per outcome: a failure's result lives as long as its failure
        # record (COVERS_FAILURE_TTL), so AsyncResult and get_cover agree throughout.
        backend.expire(key, int(get_settings().failure_ttl))


def _note_ending(store: JobStore, job: Job, via: str) -> None:
    """The ending on the job's timeline, living as long as the ended record."""
    life = store.lifetimes
    if job.error is not None:
        entry = event("failed", job.finished_at, kind=job.error.get("kind"),
                      code=job.error.get("code"), via=via)
        store.history.add(job.job_id, entry, ttl_s=life.failure_ttl_s)
    else:
        entry = event("succeeded", job.finished_at, images=len(job.images), via=via)
        store.history.add(job.job_id, entry, ttl_s=life.result_ttl_s)


def job_ended(store: JobStore, job: Job | None, via: str = "worker") -> None:
    """Run once per ended job (as read just after it ended): the ``cover_finished``
    signal, the app's notice and, for a succeeded job when COVERS_IMAGE_STORE is set,
    the copy of its images. First of all, the outcome is written to Celery's result
    backend (`AsyncResult(job_id).get()` returns or raises it), and the ending goes on
    the job's timeline (`via`: who ended it, ``worker`` or ``callback``)."""
    if job is None:
        return
    job_id = job.job_id
    record = job.to_dict()
    record_result(job, record)
    _note_ending(store, job, via)
    announce_end(job, record)  # the task event, when task events are on
    # The ending was counted (jobs_ended_total, job_duration_seconds) by the step that
    # ended it (`JobStore.finish`), whichever process that was.
    try:
        cover_finished.send(sender=job_ended, job_id=job_id, record=record)
    except Exception:  # an app's receiver must not stop the notice
        log.exception("a cover_finished receiver failed for job %s", job_id)
    if store.lifetimes.notice_lease_s > 0 and job.callback_url:
        deliver_soon(job)  # already in the due set (JobStore.finish) in case we die
    # Its own task: the job has already succeeded, and a slow or failing copy must
    # never hold up or undo that.
    if job.state is JobState.SUCCEEDED and job.images and get_settings().image_store:
        schedule_images(store, job)
