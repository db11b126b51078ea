"""Telling the app how each job ended, when Kie's callbacks come to us.

When ``COVERS_CALLBACK_URL`` is set, Kie calls our endpoint, not the app's; so
once a job ends (succeeded, or failed for good) we POST the outcome to the
job's own ``callBackUrl``: Kie's callback body plus our job id, state and
error, signed as Kie signs (``X-Webhook-Timestamp``, ``X-Webhook-Signature`` =
base64(HMAC-SHA256(COVERS_APP_WEBHOOK_KEY, data.taskId + "." + timestamp)))
when ``COVERS_APP_WEBHOOK_KEY`` is set. A notice the app does not take (no
2xx) is tried again with backoff and full jitter from the due set
(`kie_covers.store.due.Due.NOTICES`) until ``COVERS_NOTIFY_MAX_AGE`` seconds after the
job ended; then it is given up and the reason kept on the job
(``notice_error``).

The first try costs no task: the process that ended the job (the callback
endpoint, or the worker whose poll ended it) hands it to its own sender thread
(`deliver_soon`). The job's end put the notice in the due set already, so if
that process dies first, the dispatcher sends it as a ``covers.notify_app``
task once `Settings.notice_lease` has passed; a lock and the ``notified_at``
mark make sure the app is told once.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
from typing import Any

from kie_covers.config import Settings, get_settings
from kie_covers.core.retry import full_jitter
from kie_covers.core.signing import signature
from kie_covers.runtime import poster
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.process import per_process
from kie_covers.store.due import Due
from kie_covers.store.jobs import Counter, JobStore
from kie_covers.store.record import Job

log = logging.getLogger("covers.notify")


def notice_body(job: Job) -> dict[str, Any]:
    """The JSON an app receives: Kie's callback shape plus ``jobId``, ``state``, ``error``.

    ``data.taskId`` is Kie's cover task id, or the job id when the job failed
    before Kie gave one.
    """
    error = job.error
    return {
        "code": 200 if error is None else int(error.get("code") or 500),
        "msg": "success" if error is None else str(error.get("message", "")),
        "data": {"taskId": job.cover_task_id or job.job_id, "images": list(job.images)},
        "jobId": job.job_id,
        "musicTaskId": job.music_task_id,
        "state": job.state.value,
        "error": error,
    }


#: Notices waiting for this process's sender thread beyond this many go by the due set.
MAX_BACKLOG = 200


class _Sender:
    """A daemon thread that delivers this process's notices, off the caller's path.

    Losing it (the process dies) loses nothing: every notice is in
    `Due.NOTICES` from the moment its job ended (`JobStore.finish`).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Job, float]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="covers-notices", daemon=True).start()

    def offer(self, job: Job) -> bool:
        """Queue a notice; False when the backlog is full."""
        if self._queue.qsize() >= MAX_BACKLOG:
            return False
        self._queue.put((job, time.monotonic()))
        return True

    def _run(self) -> None:
        while True:
            job, queued_at = self._queue.get()
            try:
                store = get_store()
                # The lock taken when the job ended is ours while well within its TTL;
                # later, deliver() takes it afresh (or finds it done).
                if job.notice_locked and time.monotonic() - queued_at < store.notices.lock_s / 2:
                    _send(store, get_settings(), job)
                else:
                    deliver(job.job_id)
            except Exception:  # e.g. Redis away: the due set sends it again later
                log.warning("job %s: notice not delivered now; the due set will retry",
                            job.job_id, exc_info=True)


@per_process
def _sender() -> _Sender:
    """This process's sender thread, started on first use (and anew after a fork)."""
    return _Sender()


def deliver_soon(job: Job) -> None:
    """Deliver an ended job's notice from this process's sender thread.

    `job` is the record as `JobStore.finish` returned it. With a full backlog (a
    slow app) the notice is left to the due set, whose lease
    (`Settings.notice_lease`) sends it as a ``covers.notify_app`` task.
    """
    if not _sender().offer(job):
        log.info("job %s: notice backlog full; the due set sends it", job.job_id)


def deliver(job_id: str) -> str:
    """Try once to deliver a job's notice.

    Returns:
        ``delivered``, ``retrying``, ``gave_up``, ``busy`` (another process is on it)
        or ``nothing`` (no job, not ended, or already delivered).
    """
    store = get_store()
    begun = store.notices.begin(job_id)
    if isinstance(begun, str):
        return begun
    return _send(store, get_settings(), begun)


def _headers(settings: Settings, job: Job) -> dict[str, str]:
    """The notice's headers: JSON, and Kie's signature when COVERS_APP_WEBHOOK_KEY is set."""
    headers = {"Content-Type": "application/json"}
    key = settings.app_webhook_key
    if key is not None:
        stamp = str(int(time.time()))
        headers["X-Webhook-Timestamp"] = stamp
        headers["X-Webhook-Signature"] = signature(key, job.cover_task_id or job.job_id, stamp)
    return headers


def _post(settings: Settings, job: Job) -> str | None:
    """POST the notice once; None when the app took it, else what went wrong."""
    body = json.dumps(notice_body(job)).encode()
    try:
        status = poster.post(job.callback_url, body, _headers(settings, job),
                             settings.notify_timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"network error: {type(exc).__name__}"
    return None if 200 <= status < 300 else f"HTTP {status}"


def _send(store: JobStore, settings: Settings, job: Job) -> str:
    """POST the notice of `job`, whose notice lock the caller holds; release the lock."""
    job_id = job.job_id
    delivered = False
    try:
        problem = _post(settings, job)
        if problem is None:
            store.notices.delivered(job_id)
            delivered = True
            log.info("job %s: outcome delivered to the app", job_id)
            return "delivered"
        attempts = store.count(job_id, Counter.NOTICE_ATTEMPTS)
        age = time.time() - (job.finished_at or time.time())
        if age >= settings.notify_max_age:
            store.notices.gave_up(job_id, f"gave up after {attempts} attempts: {problem}")
            log.warning("job %s: gave up telling the app after %d attempts (%s)", job_id,
                        attempts, problem)
            return "gave_up"
        wait = full_jitter(attempts, settings.backoff_base, settings.backoff_max)
        wait = min(wait, max(0.05, settings.notify_max_age - age))
        store.due.later(Due.NOTICES, job_id, wait)
        log.info("job %s: app did not take the outcome (%s); again in %.1fs", job_id,
                 problem, wait)
        return "retrying"
    finally:
        if not delivered:
            store.notices.unlock(job_id)
