"""The cover task, registered as ``covers.generate_cover``.

Keyword arguments exactly as Kie spells them: ``taskId`` (the music task id)
and ``callBackUrl``. A producer in any language can send it by name::

    app.send_task("covers.generate_cover",
                  kwargs={"taskId": "73d6…", "callBackUrl": "https://app/cb"})

The Celery task id is the job id. Each run does one step (submit or poll) and
then either ends the job or puts it back in the due set
(`kie_covers.services.cover_run`). `AsyncResult(job_id)` shows ``PENDING``
meanwhile, ``WAITING`` while the job waits out a rate limit, maintenance,
credits or a fault, ``SUBMITTED`` after such a wait once Kie has the cover,
then the outcome of `get_cover`, or raises the job's typed error.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject

from kie_covers.core.states import CeleryState
from kie_covers.runtime.app import app
from kie_covers.runtime.messages import COVER_TASK
from kie_covers.services.cover_run import JobBusy, JobIdRefused, run_cover

log = logging.getLogger("covers.task")

#: Redis errors that mean "not reachable right now", not "a bug".
REDIS_OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)


class CoverTask(Task):
    """Base of the cover task: Celery's side of a run (acks, requeue, shown states)."""

    acks_late = True
    reject_on_worker_lost = True
    #: Let malformed messages reach our own validation instead of Celery's TypeError.
    typing = False

    def run_job(self, payload: dict[str, Any]) -> dict[str, Any] | str:
        """Run one step; if Redis is out of reach, hand the message back to the broker.

        The job is still in the due set, so even a message that cannot be handed back
        is sent again within COVERS_REDISPATCH_AFTER seconds.
        """
        job_id: str = self.request.id
        queue = (self.request.delivery_info or {}).get("routing_key")
        try:
            return run_cover(job_id, payload, queue, self._show)
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

    def _show(self, job_id: str, state: CeleryState, record: dict[str, Any]) -> None:
        self.update_state(task_id=job_id, state=state.value, meta=record)


# ignore_result: a run's return value is not the job's outcome (most runs leave the job
# waiting); the outcome is written to the result backend once, by whoever ends the job
# (`kie_covers.services.endings.job_ended`).
@app.task(bind=True, base=CoverTask, name=COVER_TASK, ignore_result=True)
def generate_cover(self: CoverTask, *args: Any, **payload: Any) -> dict[str, Any] | str:
    """Get the cover for music task ``taskId``; see the module docstring."""
    if args:
        payload = {"_positional": list(args), **payload}
    return self.run_job(payload)
