"""Telling the app how each job ended, when Kie's callbacks come to us.

When ``COVERS_CALLBACK_URL`` is set, Kie calls our endpoint, not the app's; so
once a job ends (succeeded, or failed for good) we POST the outcome to the
job's own ``callBackUrl``: Kie's callback body plus our job id, state and
error, signed as Kie signs (``X-Webhook-Timestamp``, ``X-Webhook-Signature`` =
base64(HMAC-SHA256(COVERS_APP_WEBHOOK_KEY, data.taskId + "." + timestamp)))
when ``COVERS_APP_WEBHOOK_KEY`` is set. A notice the app does not take (no
2xx) is tried again with backoff and full jitter from the due set
(`config.keys.NOTIFY_DUE`) until ``COVERS_NOTIFY_MAX_AGE`` seconds after the
job ended; then it is given up and the reason kept on the job
(``notice_error``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import requests

from config import get_settings, keys
from tasks.jobs import Job, JobStore
from tasks.retry import full_jitter
from worker.app import app
from worker.connections import get_store

log = logging.getLogger("covers.notify")

NOTIFY_TASK = "covers.notify_app"

_sessions: dict[int, requests.Session] = {}


def _session() -> requests.Session:
    pid = os.getpid()
    if pid not in _sessions:
        _sessions[pid] = requests.Session()
    return _sessions[pid]


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
        "musicTaskId": job.task_id,
        "state": job.state.value,
        "error": error,
    }


def send_notice(job_id: str, queue: str | None = None) -> None:
    """Send the message that delivers a job's notice."""
    app.send_task(NOTIFY_TASK, kwargs={"jobId": job_id},
                  queue=queue or get_settings().queue)


def schedule_notice(store: JobStore, job: Job) -> None:
    """Put a job's notice in the due set (so it is never lost) and send it now."""
    lease = get_settings().redispatch_after
    store.redis.zadd(keys.NOTIFY_DUE, {job.job_id: int((time.time() + lease) * 1000)})
    send_notice(job.job_id, job.queue or None)


def deliver(job_id: str) -> str:
    """Try once to deliver a job's notice.

    Returns:
        ``delivered``, ``retrying``, ``gave_up``, ``busy`` (another process is on it)
        or ``nothing`` (no job, not ended, or already delivered).
    """
    settings = get_settings()
    store = get_store()
    lock = keys.notify_lock(job_id)
    if not store.redis.set(lock, "1", nx=True, px=int(settings.notify_timeout * 3000)):
        return "busy"
    try:
        job = store.get(job_id)
        if job is None or not job.state.final or job.notified_at is not None:
            store.redis.zrem(keys.NOTIFY_DUE, job_id)
            return "nothing"
        body = json.dumps(notice_body(job)).encode()
        headers = {"Content-Type": "application/json"}
        key = settings.app_webhook_key
        if key is not None:
            from worker.web import signature

            stamp = str(int(time.time()))
            headers["X-Webhook-Timestamp"] = stamp
            headers["X-Webhook-Signature"] = signature(
                key, job.cover_task_id or job.job_id, stamp)
        try:
            answer = _session().post(job.callback_url, data=body, headers=headers,
                                     timeout=settings.notify_timeout, allow_redirects=False)
            problem = None if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            problem = f"network error: {type(exc).__name__}"
        if problem is None:
            store.update(job_id, notified_at=repr(time.time()))
            store.redis.zrem(keys.NOTIFY_DUE, job_id)
            log.info("job %s: outcome delivered to the app", job_id)
            return "delivered"
        attempts = store.count(job_id, "notice_attempts")
        age = time.time() - (job.finished_at or time.time())
        if age >= settings.notify_max_age:
            store.update(job_id, notice_error=f"gave up after {attempts} attempts: {problem}")
            store.redis.zrem(keys.NOTIFY_DUE, job_id)
            log.warning("job %s: gave up telling the app after %d attempts (%s)", job_id,
                        attempts, problem)
            return "gave_up"
        wait = full_jitter(attempts, settings.backoff_base, settings.backoff_max)
        wait = min(wait, max(0.05, settings.notify_max_age - age))
        store.redis.zadd(keys.NOTIFY_DUE, {job_id: int((time.time() + wait) * 1000)})
        log.info("job %s: app did not take the outcome (%s); again in %.1fs", job_id,
                 problem, wait)
        return "retrying"
    finally:
        store.redis.delete(lock)


@app.task(name=NOTIFY_TASK, acks_late=True, ignore_result=True)
def notify_app(jobId: str) -> str:
    """Deliver one job's notice (see the module docstring)."""
    return deliver(str(jobId))
