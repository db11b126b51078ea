"""The cover task, registered as ``covers.generate_cover``.

Keyword arguments exactly as Kie spells them: ``taskId`` (the music task id)
and ``callBackUrl``. A producer in any language can send it by name::

    app.send_task("covers.generate_cover",
                  kwargs={"taskId": "73d6…", "callBackUrl": "https://app/cb"})

The Celery task id is the job id. Each run does one step (submit or poll) and
then either ends the job or puts it back in the due set. `AsyncResult(job_id)`
shows ``PENDING`` meanwhile, ``WAITING`` while the job waits out a rate limit,
maintenance, credits or a fault, ``SUBMITTED`` after such a wait once Kie has
the cover, then the outcome of `get_cover`, or raises the job's typed error.
A run costs three Redis round trips: one to start (`JobStore.begin`), the
limiter (which also counts the attempt or poll it lets go), and one to end
(`mark_submitted`, `release` or `finish`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Ignore, Reject

from kie_covers.config import get_settings
from kie_covers.core import errors
from kie_covers.core.retry import Effect, decide, rule_for
from kie_covers.core.schemas import validate_cover_request
from kie_covers.core.states import CELERY_SUBMITTED, JobState
from kie_covers.runtime import metrics
from kie_covers.runtime.app import app
from kie_covers.runtime.connections import get_limiters, get_store
from kie_covers.runtime.kie_client import get_client
from kie_covers.runtime.messages import COVER_TASK
from kie_covers.services.endings import job_ended
from kie_covers.services.step import Done, Throttled, advance
from kie_covers.store.jobs import Job, JobStore
from kie_covers.store.limiter import hold_credits, pause_all
from kie_covers.store.logfields import job_fields

log = logging.getLogger("covers.task")

#: Redis errors that mean "not reachable right now", not "a bug".
REDIS_OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)
#: Celery state while a job waits to retry (rate limit, maintenance, credits, fault).
CELERY_WAITING = "WAITING"


def _replay(job: Job) -> dict[str, Any]:
    """The outcome of a job that already ended: its record, or its error raised."""
    if job.state is JobState.FAILED:
        raise errors.from_dict(job.error or {"kind": "error", "message": "failed"})
    return job.to_dict()


class CoverTask(Task):
    """Base of the cover task: one locked step per run, then the retry policy.

    Cross-cutting work lives here, so the task body stays one line.
    """

    acks_late = True
    reject_on_worker_lost = True
    #: Let malformed messages reach our own validation instead of Celery's TypeError.
    typing = False

    def run_job(self, payload: dict[str, Any]) -> dict[str, Any] | str:
        """Run one step; if Redis is out of reach, hand the message back to the broker.

        The job is still in the due set, so even a message that cannot be handed back
        is sent again within COVERS_REDISPATCH_AFTER seconds.
        """
        try:
            return self._run_job(payload)
        except REDIS_OUTAGES as outage:
            log.warning("job %s: Redis out of reach (%s); message goes back to the queue",
                        self.request.id, type(outage).__name__)
            raise Reject(str(type(outage).__name__), requeue=True) from None

    def _run_job(self, payload: dict[str, Any]) -> dict[str, Any] | str:
        """Validate the payload, start the run (one round trip), do one step."""
        settings = get_settings()
        store = get_store()
        job_id: str = self.request.id
        try:
            request = validate_cover_request(payload)
        except errors.InvalidPayload as error:
            if store.record_rejected(job_id, error):
                job_ended(store, store.get(job_id))
            log.warning("job %s refused: %s", job_id, error)
            raise
        queue = (self.request.delivery_info or {}).get("routing_key") or settings.queue
        begun = store.begin(job_id, request["taskId"], request["callBackUrl"],
                            settings.redispatch_after, queue)
        if begun.status == "busy":
            log.info("job %s is being worked on elsewhere; this copy stops", job_id)
            raise Ignore()
        if begun.job is None:
            self._gone(job_id)
        if begun.token is None:
            return _replay(begun.job)
        try:
            return self._step(begun.job, store, begun.token)
        except BaseException:
            # A step that ended or released the job already let go of its lock: then
            # this is a no-op. Otherwise the next run need not wait for the lock's TTL.
            store.unlock(job_id, begun.token)
            raise

    def _gone(self, job_id: str) -> NoReturn:
        log.warning("job %s has no record (expired?); dropping the message", job_id)
        raise Ignore()

    def _step(self, job: Job, store: JobStore, token: str) -> dict[str, Any] | str:
        """One step; every way out ends the job or releases its run lock."""
        settings = get_settings()
        try:
            step = advance(job, store, get_client(), get_limiters(), settings, token)
        except Throttled as throttled:
            return self._wait(job, store, token, throttled)
        except errors.CoverError as error:
            return self._after_error(job, store, token, error)
        if isinstance(step, Done):
            ended = store.finish(job.job_id, images=step.images)
            if ended is not None:
                log.info("job %s (music %s) succeeded with %d images", job.job_id,
                         job.task_id, len(step.images), extra=job_fields(job, "succeeded"))
                job_ended(store, ended)
                return ended.to_dict()
            fresh = store.get(job.job_id)
            return _replay(fresh) if fresh else self._gone(job.job_id)
        if not step.released:  # a poll: back to the due set, lock released, one round trip
            store.release(job.job_id, token, step.seconds, retries=0, faults=0,
                          wait_reason=None)
        # Celery's state changes only when a wait ends: a job that never waited shows
        # PENDING until it ends, like any task, and costs no result-backend write here.
        if job.wait_reason:
            self._show(store, job.job_id, CELERY_SUBMITTED)
        log.info("job %s waits %.1fs for its %s", job.job_id, step.seconds, step.reason,
                 extra=job_fields(job, "wait"))
        return f"waits {step.seconds:g}s for its {step.reason}"

    def _wait(self, job: Job, store: JobStore, token: str, throttled: Throttled) -> str:
        """Back to the due set until the limiter's slot; no attempt is counted."""
        metrics.inc("limiter_waits_total", reason=throttled.reason)
        metrics.inc("limiter_wait_seconds_total", round(throttled.wait_s, 3),
                    reason=throttled.reason)
        store.release(job.job_id, token, throttled.wait_s, wait_reason=throttled.reason)
        log.debug("job %s waits %.3fs (%s)", job.job_id, throttled.wait_s, throttled.reason,
                  extra=job_fields(job, "throttled"))
        if job.wait_reason != throttled.reason:
            self._show(store, job.job_id, CELERY_WAITING)
        return f"throttled ({throttled.reason}); next look in {throttled.wait_s:.3f}s"

    def _after_error(self, job: Job, store: JobStore, token: str,
                     error: errors.CoverError) -> dict[str, Any] | str:
        settings = get_settings()
        now = time.time()
        held = now - job.hold_since if job.hold_since is not None else 0.0
        decision = decide(error, retries=job.retries, faults=job.faults,
                          waited_for_credits_s=held, settings=settings)
        if decision.wait_s is None:
            ended = store.finish(job.job_id, error=error)
            if ended is not None:
                log.warning("job %s (music %s) failed: %s [%s]", job.job_id, job.task_id,
                            error, decision.reason, extra=job_fields(job, "failed"))
                job_ended(store, ended)
                fresh: Job | None = ended
            else:
                fresh = store.get(job.job_id)
            if fresh is None:
                raise error
            return _replay(fresh)
        rule = rule_for(error)
        if rule.effect is Effect.PAUSE_ALL and pause_all(store.redis, decision.wait_s,
                                                         error.kind):
            log.warning("pausing every worker for %.1fs: %s", decision.wait_s, error)
            metrics.inc("pauses_total", reason=error.kind)
        if rule.effect is Effect.HOLD_CREDITS and hold_credits(store.redis, error.kind):
            log.warning("holding every generate until credits return: %s", error)
            metrics.inc("pauses_total", reason=error.kind)
        changes: dict[str, Any] = {"retries": job.retries + 1, "wait_reason": error.kind}
        if rule.counted:
            changes["faults"] = job.faults + 1
        if isinstance(error, errors.OutOfCredits) and job.hold_since is None:
            changes["hold_since"] = repr(now)
        store.release(job.job_id, token, decision.wait_s, **changes)
        log.warning("job %s (music %s) retries in %.1fs: %s [%s]", job.job_id, job.task_id,
                    decision.wait_s, error, decision.reason, extra=job_fields(job, "retry"))
        if job.wait_reason != error.kind:
            self._show(store, job.job_id, CELERY_WAITING)
        return f"retry ({error.kind}); next look in {decision.wait_s:.1f}s"

    def _show(self, store: JobStore, job_id: str, state: str) -> None:
        """Let Celery's result backend show a waiting job's state (`AsyncResult.state`),
        with its record as ``info``; read here, as this happens only when a wait
        starts or ends. A job that ended meanwhile keeps the outcome already written."""
        record = store.get(job_id)
        if record is not None and not record.state.final:
            self.update_state(task_id=job_id, state=state, meta=record.to_dict())


# ignore_result: a run's return value is not the job's outcome (most runs leave the job
# waiting); the outcome is written to the result backend once, by whoever ends the job
# (`tasks.endings.job_ended`).
@app.task(bind=True, base=CoverTask, name=COVER_TASK, ignore_result=True)
def generate_cover(self: CoverTask, *args: Any, **payload: Any) -> dict[str, Any] | str:
    """Get the cover for music task ``taskId``; see the module docstring."""
    if args:
        payload = {"_positional": list(args), **payload}
    return self.run_job(payload)
