"""What happens once a job has ended, whoever ended it (worker or callback endpoint)."""

from __future__ import annotations

import logging

from config import get_settings
from tasks import metrics
from tasks.jobs import JobStore
from tasks.notify import schedule_notice
from tasks.signals import cover_finished

log = logging.getLogger("covers.endings")


def job_ended(store: JobStore, job_id: str) -> None:
    """Run once per ended job: the ``cover_finished`` signal and the app's notice."""
    job = store.get(job_id)
    if job is None:
        return
    record = job.to_dict()
    metrics.inc("jobs_ended_total", state=job.state.value,
                kind=(job.error or {}).get("kind", ""))
    if job.created_at is not None and job.finished_at is not None:
        metrics.observe("job_duration_seconds", max(0.0, job.finished_at - job.created_at))
    try:
        cover_finished.send(sender=job_ended, job_id=job_id, record=record)
    except Exception:  # an app's receiver must not stop the notice
        log.exception("a cover_finished receiver failed for job %s", job_id)
    if get_settings().callback_url and job.callback_url:
        schedule_notice(store, job)
