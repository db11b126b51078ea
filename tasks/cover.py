"""The cover task, registered as ``covers.generate_cover``.

Keyword arguments exactly as Kie spells them: ``taskId`` (the music task id)
and ``callBackUrl``. A producer in any language can send it by name::

    app.send_task("covers.generate_cover",
                  kwargs={"taskId": "73d6…", "callBackUrl": "https://app/cb"})

The Celery task id is the job id. Each run does one step (submit or poll) and
then either ends the job or puts it back in the due set
(`kie_covers.services.cover_run`). A run that leaves the job waiting ends with
`JobWaits` (a Celery ``Retry``), so Celery never records a step as ``SUCCESS``:
`AsyncResult(job_id)` shows ``PENDING`` until the first run, ``WAITING`` while the
job is held back (rate limit, maintenance, credits, a fault's backoff) and
``SUBMITTED`` while Kie makes the cover, each with the reason and when it resumes
as ``info``; then the outcome of `get_cover`, or raises the job's typed error.
With task events on, `CoverRequest` sends ``task-waiting`` / ``task-submitted``
for such a run (`kie_covers.runtime.task_view` tells the whole story).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import Task
from celery.exceptions import Ignore, Reject
from celery.worker.request import Request

from kie_covers.runtime.app import app
from kie_covers.runtime.messages import COVER_TASK
from kie_covers.runtime.task_view import (
    RESULT_REPR_MAX,
    JobWaits,
    Wait,
    job_has_ended,
    show_wait,
)
from kie_covers.services.cover_run import JobBusy, JobIdRefused, run_cover

log = logging.getLogger("covers.task")

#: Redis errors that mean "not reachable right now", not "a bug".
REDIS_OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)


class CoverRequest(Request):
    """A cover message in the worker's main process: a run that left its job waiting
    (`JobWaits`) is acknowledged and shown as ``task-waiting`` / ``task-submitted``,
    not as Celery's ``task-retried`` (see `kie_covers.runtime.task_view`)."""

    def on_retry(self, exc_info: ExceptionInfo) -> None:
        waits = exc_info.exception
        if isinstance(waits, ExceptionWithTraceback):
            waits = waits.exc
        if not isinstance(waits, JobWaits):
            super().on_retry(exc_info)
            return
        if self.task.acks_late:
            self.acknowledge()
        if self._task_events_on() and not self._ended():
            self.send_event(waits.event, **waits.event_fields())

    def _task_events_on(self) -> bool:
        eventer = self._eventer
        return bool(eventer is not None and eventer.enabled and self.task.send_events
                    and (not eventer.groups or "task" in eventer.groups))

    def _ended(self) -> bool:
        # Read only when an event would go out: a wait seen after the job ended (a
        # callback came in between) must not overwrite the ended task's result.
        try:
            return job_has_ended(self.id)
        except REDIS_OUTAGES:
            return False


class CoverTask(Task):
    """Base of the cover task: Celery's side of a run (acks, requeue, shown states)."""

    Request = CoverRequest
    #: Task events show the whole job record as an ended task's result.
    resultrepr_maxsize = RESULT_REPR_MAX
    acks_late = True
    reject_on_worker_lost = True
    #: Let malformed messages reach our own validation instead of Celery's TypeError.
    typing = False

    def run_job(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one step; if Redis is out of reach, hand the message back to the broker.

        Returns the ended job's record; raises its error, or `JobWaits` when the job
        waits.

        The job is still in the due set, so even a message that cannot be handed back
        is sent again within COVERS_REDISPATCH_AFTER seconds.
        """
        job_id: str = self.request.id
        queue = (self.request.delivery_info or {}).get("routing_key")
        try:
            outcome = run_cover(job_id, payload, queue, show_wait)
        except JobBusy as busy:
            log.info("%s; this copy stops", busy)
            raise Ignore() from None
        except JobIdRefused:
            # Already logged (with the id cut short); no record and no result to
            # write under an id that cannot name one: drop the message.
            raise Ignore() from None
        except REDIS_OUTAGES as outage:
            log.warning("job %s: Redis out of reach (%s); message goes back to the queue",
                        job_id, type(outage).__name__)
            raise Reject(str(type(outage).__name__), requeue=True) from None
        if isinstance(outcome, Wait):
            raise JobWaits.of(outcome)
        return outcome


# ignore_result: a run's return value is not the job's outcome (most runs leave the job
# waiting); the outcome is written to the result backend once, by whoever ends the job
# (`kie_covers.services.endings.job_ended`).
@app.task(bind=True, base=CoverTask, name=COVER_TASK, ignore_result=True)
def generate_cover(self: CoverTask, *args: Any, **payload: Any) -> dict[str, Any]:
    """Get the cover for music task ``taskId``; see the module docstring."""
    if args:
        payload = {"_positional": list(args), **payload}
    return self.run_job(payload)
