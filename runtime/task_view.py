"""Celery's view of a job: one Celery task per job, whose state is the job's state.

A job's id is the Celery task id of each of its messages, so Flower, ``celery events``
and ``AsyncResult`` follow one task per job however many runs (steps) it takes:

- **While it waits** (a limiter slot, a 429 or 455 pause, credits, a fault's backoff,
  or Kie still making the cover) its state is a custom one (`CeleryState`):
  ``WAITING`` when held back, ``SUBMITTED`` when Kie has it and the next poll is
  due. The result backend holds `Wait.info` (reason and when it resumes). The cover
  task ends such a run by raising `JobWaits` (a Celery ``Retry``), so no worker ever
  reports ``SUCCESS`` for a step; the worker's request (`kie_covers.tasks.cover`) then
  sends the event ``task-waiting`` / ``task-submitted`` instead of ``task-retried``.
  Celery's event state gives a custom state lower precedence than ``SUCCESS`` and
  ``FAILURE``, so a late wait event never turns an ended job back into a waiting one.
- **When it ends**, ``SUCCESS`` with the job record (its ``images``) as the result, or
  ``FAILURE`` with the typed error (`kie_covers.services.endings.record_result`).
  Whoever ends the job sends the task event (`announce_end`): inside the job's own
  task run the worker sends Celery's own ``task-succeeded`` / ``task-failed``; when
  `covers web` ends it by a callback (or any process outside that run), it sends
  them itself, while some worker has task events on (`task_events_on`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import current_task
from celery.exceptions import Retry

from kie_covers.config import get_settings
from kie_covers.core import errors
from kie_covers.core.states import CeleryState, JobState, WaitReason
from kie_covers.runtime.app import app
from kie_covers.runtime.connections import get_redis
from kie_covers.runtime.messages import COVER_TASK
from kie_covers.runtime.process import per_process
from kie_covers.store.record import Job
from kie_covers.store.shown_state import ShownState

log = logging.getLogger("covers.events")

#: Characters of a job record shown as a task's result in task events (Celery's
#: default, 1024, could cut a record with a long callback URL before its images).
RESULT_REPR_MAX = 8192
#: Seconds a process trusts its last look at the task-events mark (`task_events_on`).
EVENTS_LOOK_EVERY_S = 1.0
#: Seconds between a worker's renewals of its task-events mark.
EVENTS_MARK_EVERY_S = 1.0
#: Seconds a mark lives: a worker that stops sending task events stops counting after this.
EVENTS_MARK_TTL_S = 5.0


def shown_result(record: dict[str, Any]) -> str:
    """A job record as a task event shows a result: its repr, cut at `RESULT_REPR_MAX`
    characters (as Celery shows a task's return value)."""
    text = repr(record)
    return text if len(text) <= RESULT_REPR_MAX else text[:RESULT_REPR_MAX - 3] + "..."


def iso(at: float) -> str:
    """Unix time `at` as ISO 8601 UTC with milliseconds (``2026-11-26T17:03:04.120Z``)."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(frozen=True)
class Wait:
    """A run left its job waiting: what Celery's tools show until the job's next run."""

    job_id: str
    music_task_id: str
    #: ``SUBMITTED`` (Kie has the cover, the next poll is due) or ``WAITING`` (held back).
    state: CeleryState
    #: The job's own state (queued or submitted).
    job_state: JobState
    reason: WaitReason
    #: Unix time (s) when the job is due again.
    resumes_at: float

    @property
    def text(self) -> str:
        """One line for logs and monitors: why it waits and until when."""
        return f"{self.state.value}: waits for {self.reason.value} until {iso(self.resumes_at)}"

    @property
    def event(self) -> str:
        """The task event that shows it (``task-waiting`` or ``task-submitted``)."""
        return f"task-{self.state.value.lower()}"

    def info(self) -> dict[str, Any]:
        """``AsyncResult(job_id).info`` while waiting (JSON-ready)."""
        return {"job_id": self.job_id, "music_task_id": self.music_task_id,
                "state": self.job_state.value, "waiting_for": self.reason.value,
                "resumes_at": iso(self.resumes_at)}


def wait_of(job: Job, reason: WaitReason, delay_s: float,
            job_state: JobState | None = None) -> Wait:
    """The `Wait` of `job` for `delay_s` seconds from now because of `reason`."""
    state = job_state or job.state
    shown = CeleryState.SUBMITTED if reason is WaitReason.COVER else CeleryState.WAITING
    return Wait(job.job_id, job.music_task_id, shown, state, reason,
                time.time() + max(0.0, delay_s))


class JobWaits(Retry, errors.KieCoversError):  # type: ignore[misc]  # Celery: no hints
    """Raised by the cover task when its run leaves the job waiting.

    A Celery ``Retry`` (the job's task will run again: the due set sends its message),
    not a new message: nothing is sent, the message is acknowledged, and the worker
    reports no ``SUCCESS`` for the step. Not an error of the job; a `KieCoversError`
    only as every exception of the project is. Picklable (it crosses the pool's pipe).
    """

    def __init__(self, event: str, text: str, reason: str, resumes_at: str) -> None:
        Retry.__init__(self, message=text)
        self.event = event
        self.text = text
        self.reason = reason
        self.resumes_at = resumes_at

    @classmethod
    def of(cls, wait: Wait) -> JobWaits:
        """The exception that ends a run with `wait`."""
        return cls(wait.event, wait.text, wait.reason.value, iso(wait.resumes_at))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.event, self.text, self.reason, self.resumes_at))

    def event_fields(self) -> dict[str, Any]:
        """Fields of the wait's task event: ``result`` (Flower's result column) is the
        text; ``reason`` and ``resumes_at`` are there for event consumers."""
        return {"result": self.text, "reason": self.reason, "resumes_at": self.resumes_at}


@per_process
def _shown() -> ShownState:
    return ShownState(get_redis())


def show_wait(wait: Wait) -> None:
    """Write `wait` to Celery's result backend (state and `Wait.info`), unless the job
    ended meanwhile: one round trip, no read-before-write. Lives COVERS_RESULT_TTL."""
    backend = app.backend
    meta: dict[str, Any] = {"status": wait.state.value, "result": wait.info(), "traceback": None,
            "children": [], "date_done": None, "task_id": wait.job_id}
    _shown().show_wait(wait.job_id, backend.get_key_for_task(wait.job_id),
                       backend.encode(meta), int(get_settings().result_ttl))


class _EventsLook:
    """This process's last look at the task-events mark (one read a second at most)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.until = 0.0
        self.on = False


_look = _EventsLook()


def task_events_on() -> bool:
    """True while some worker sends task events (started with ``-E``, or told by a
    monitor's ``enable_events``, as Flower does): the workers renew a mark in Redis."""
    now = time.monotonic()
    with _look.lock:
        if now < _look.until:
            return _look.on
    on = _shown().task_events_marked()
    with _look.lock:
        _look.on, _look.until = on, now + EVENTS_LOOK_EVERY_S
    return on


def mark_task_events(node: str) -> None:
    """A worker with task events on says so (renewed every `EVENTS_MARK_EVERY_S`)."""
    _shown().mark_task_events(node, EVENTS_MARK_TTL_S)


def _in_own_run(job_id: str) -> bool:
    """True inside a run of the job's own cover task: the worker sends its events."""
    task = current_task._get_current_object()
    return task is not None and task.name == COVER_TASK and task.request.id == job_id


def announce_end(job: Job, record: dict[str, Any]) -> None:
    """Send the ended job's task event (``task-succeeded`` with the record as result,
    or ``task-failed`` with the typed error) when task events are on, unless the
    job's own task run ended it (the worker sends Celery's own then)."""
    if _in_own_run(job.job_id) or not task_events_on():
        return
    if job.error is not None:
        kind = "task-failed"
        fields: dict[str, Any] = {"exception": repr(errors.from_dict(job.error)),
                                  "traceback": None}
    else:
        kind = "task-succeeded"
        fields = {"result": shown_result(record)}
    _send(job.job_id, kind, fields)


def _send(job_id: str, kind: str, fields: dict[str, Any]) -> None:
    """Send task event `kind` of job `job_id` from this process (best effort)."""
    try:
        with app.events.default_dispatcher() as dispatcher:
            dispatcher.send(kind, uuid=job_id, **fields)
    except Exception as error:  # a monitor's view must never undo the job's change
        log.warning("job %s: its %s event was not sent (%s)", job_id, kind,
                    type(error).__name__)


def announce_retry(job: Job) -> None:
    """A failed job queued again (a retry round): send ``task-retried`` when task
    events are on. Celery's event state lets ``RETRY`` follow ``FAILURE`` (custom
    states cannot), so monitors follow the job's new runs."""
    if not task_events_on():
        return
    text = f"queued again after its failure (retry round {job.retry_rounds})"
    _send(job.job_id, "task-retried", {"exception": text, "traceback": None})


def job_has_ended(job_id: str) -> bool:
    """True if job `job_id`'s record says it ended (read now, one round trip)."""
    return _shown().has_ended(job_id)
