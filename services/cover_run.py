"""One run of the cover task: validate, begin, one step, then exactly one exit.

`run_cover` is all a run of ``covers.generate_cover`` does, without Celery: the
task (`kie_covers.tasks.cover`) only turns its results into Celery's terms. A
run costs three Redis round trips: one to start (`JobStore.begin`), the limiter
(which also counts the attempt or poll it lets go), and one to end
(`Run.submitted`, `Run.wait` or `Run.finish`); a run that leaves the job waiting
adds one to show the wait in Celery's result backend (`kie_covers.runtime.task_view`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kie_covers.config import Settings, get_settings
from kie_covers.core import errors
from kie_covers.core.retry import Effect, decide, rule_for
from kie_covers.core.schemas import job_id_problem, validate_cover_request
from kie_covers.core.states import JobState, WaitReason
from kie_covers.runtime import metrics
from kie_covers.runtime.connections import get_limiters, get_store
from kie_covers.runtime.heartbeat import current_holder, holding, reserving_holder
from kie_covers.runtime.kie_client import GenerateAccepted, get_client, get_masker
from kie_covers.runtime.task_view import Wait, wait_of
from kie_covers.services.endings import job_ended
from kie_covers.services.step import (
    Done,
    Failed,
    Later,
    Outcome,
    Throttled,
    advance,
    from_callback,
)
from kie_covers.store.history import Event, event
from kie_covers.store.jobs import Counter, JobStore
from kie_covers.store.record import Job
from kie_covers.store.run import Busy, Ended, Run

log = logging.getLogger("covers.task")

#: Shows a waiting job in Celery's result backend (`kie_covers.runtime.task_view.show_wait`).
Show = Callable[[Wait], None]


class JobBusy(errors.KieCoversError):
    """Another run holds this job (a duplicate message): this one stops quietly."""


#: Characters of a refused job id shown in the log line (never the whole id).
JOB_ID_SHOWN = 40


class JobIdRefused(errors.InvalidPayload):
    """A raw message's job id (its Celery task id) breaks `job_id_problem`'s rule.

    Nothing is written for it, not even a failed record: the id cannot safely name a
    record, a Redis key or an image file. The task drops the message (Celery's
    ``Ignore``) after one log line showing at most `JOB_ID_SHOWN` characters of it.
    """


@dataclass(frozen=True)
class RunContext:
    """What a run needs besides the job: the store, settings, and how to show a wait."""

    store: JobStore
    settings: Settings
    show: Show


def run_cover(job_id: str, payload: dict[str, Any], queue: str | None, show: Show
              ) -> dict[str, Any] | Wait:
    """Run one step of job `job_id` from a message's `payload`.

    Args:
        queue: the queue the message came from (the job's queue for later runs).
        show: called with each wait the run leaves the job in, to show it in Celery's
            result backend.

    Returns:
        The ended job's record, or the `Wait` the job was left in.

    Raises:
        JobIdRefused: `job_id` is not a usable job id (see
            `kie_covers.core.schemas.job_id_problem`); nothing is recorded.
        InvalidPayload: the payload failed validation (the job is recorded failed).
        CoverError: the job had failed (its error, as recorded).
        JobBusy: another run holds the job.
    """
    # Before anything touches Redis: a 100 KB id must not become a key or a file name.
    problem = job_id_problem(job_id)
    if problem is not None:
        shown = repr(job_id[:JOB_ID_SHOWN]) if isinstance(job_id, str) else "-"
        more = "..." if isinstance(job_id, str) and len(job_id) > JOB_ID_SHOWN else ""
        log.warning("message dropped: job id %s%s refused: %s", shown, more, problem)
        raise JobIdRefused(f"job id refused: {problem}",
                           detail={"fields": {"job_id": [problem]}})
    context = RunContext(get_store(), get_settings(), show)
    store = context.store
    try:
        request = validate_cover_request(payload)
    except errors.InvalidPayload as error:
        job_ended(store, store.record_rejected(job_id, error))
        log.warning("job %s refused: %s", job_id, error)
        raise
    begun = store.begin(job_id, request["taskId"], request["callBackUrl"],
                        context.settings.redispatch_after, queue or context.settings.queue,
                        request["priority"], request["tenant"], holder=current_holder(),
                        reserved_by=reserving_holder())
    if isinstance(begun, Busy):
        raise JobBusy(f"job {job_id} is being worked on elsewhere")
    if isinstance(begun, Ended):
        return replay(begun.job)
    with begun as run, holding(job_id):
        counter = Counter.ATTEMPTS if run.job.state is JobState.QUEUED else Counter.POLLS
        outcome = advance(run.job, get_client(), get_limiters(), context.settings,
                          store.counter_key(job_id, counter))
        return apply(run, outcome, context)


def replay(job: Job) -> dict[str, Any]:
    """The outcome of a job that already ended: its record, or its error raised."""
    if job.state is JobState.FAILED:
        raise errors.from_dict(job.error or {"kind": "error", "message": "failed"})
    return job.to_dict()


def apply(run: Run, outcome: Outcome, context: RunContext) -> dict[str, Any] | Wait:
    """Take the run's one exit that `outcome` calls for."""
    job = run.job
    if isinstance(outcome, GenerateAccepted):
        return _accepted(run, outcome, context)
    if isinstance(outcome, Done):
        return _end(run, context.store, images=outcome.images)
    if isinstance(outcome, Failed):
        return _after_error(run, outcome.error, context)
    if isinstance(outcome, Throttled):
        metrics.inc("limiter_waits_total", reason=outcome.reason.value)
        metrics.inc("limiter_wait_seconds_total", round(outcome.wait_s, 3),
                    reason=outcome.reason.value)
        # Only a change of reason goes on the timeline: slot waits come in runs.
        noted = ([] if job.wait_reason is outcome.reason
                 else [_wait_event(outcome.reason.value, outcome.wait_s)])
        run.wait(outcome.wait_s, wait_reason=outcome.reason, timeline=noted)
        if outcome.parked:
            # A dispatcher may have granted it between its ask and this park, and the
            # park just pushed it back: make it due now again if so.
            get_limiters().generate.wake_if_granted(job.job_id)
        log.debug("job %s waits %.3fs (%s)", job.job_id, outcome.wait_s, outcome.reason,
                  extra=job.log_fields("throttled"))
        return _shown(context, wait_of(job, outcome.reason, outcome.wait_s))
    run.wait(outcome.seconds, retries=0, faults=0, wait_reason=None,
             timeline=[event("poll", n=job.polls + 1)])
    return _waits(job, outcome, context)


def _note(context: RunContext, job: Job, *events: Event) -> None:
    """Append to the job's timeline (one round trip; never fails the run)."""
    context.store.history.add(job.job_id, *events)


def _wait_event(reason: str, wait_s: float) -> Event:
    return event("wait", reason=reason, until=int((time.time() + wait_s) * 1000))


def _step_event(job: Job, error: errors.CoverError) -> Event:
    """The failed call of this step: a generate (``attempt``) or a poll."""
    if job.state is JobState.QUEUED:
        return event("attempt", n=job.attempts + 1, kind=error.kind, code=error.code)
    return event("poll", n=job.polls + 1, kind=error.kind, code=error.code)


def _accepted(run: Run, outcome: GenerateAccepted, context: RunContext) -> dict[str, Any] | Wait:
    job = run.job
    poll_s = context.settings.kie_poll_interval
    recorded = run.submitted(outcome.cover_task_id, poll_s, timeline=[
        event("submitted", attempt=job.attempts + 1, cover_task_id=outcome.cover_task_id,
              existing=outcome.existing or None)])
    log.info("job %s (music %s) submitted: cover task %s%s", job.job_id, job.music_task_id,
             outcome.cover_task_id, " (already existed)" if outcome.existing else "",
             extra=job.log_fields("submitted"))
    if recorded.early_callback is not None:
        return apply(run, from_callback(recorded.early_callback), context)
    if run.open:  # no longer queued (another run or a callback was first): look later
        run.wait(poll_s, retries=0, faults=0, wait_reason=None)
    return _waits(job, Later(poll_s), context)


def _waits(job: Job, later: Later, context: RunContext) -> Wait:
    log.info("job %s waits %.1fs for its %s", job.job_id, later.seconds, later.reason,
             extra=job.log_fields("wait"))
    return _shown(context, wait_of(job, later.reason, later.seconds, JobState.SUBMITTED))


def _end(run: Run, store: JobStore, images: list[str] | None = None,
         error: errors.CoverError | None = None) -> dict[str, Any]:
    job = run.job
    if error is not None:  # e.g. a kept callback's text: our secrets never get stored
        error = error.masked(get_masker())
    ended = run.finish(images=images, error=error)
    if ended is not None:
        if error is None:
            log.info("job %s (music %s) succeeded with %d images", job.job_id,
                     job.music_task_id, len(ended.images), extra=job.log_fields("succeeded"))
        job_ended(store, ended)
        return replay(ended)
    fresh = store.get(job.job_id)  # ended meanwhile (a callback): report that outcome
    if fresh is None:
        if error is not None:
            raise error
        raise JobBusy(f"job {job.job_id} has no record (expired?)")
    return replay(fresh)


def _after_error(run: Run, error: errors.CoverError, context: RunContext
                 ) -> dict[str, Any] | Wait:
    job, settings = run.job, context.settings
    now = time.time()
    held = now - job.hold_since if job.hold_since is not None else 0.0
    decision = decide(error, retries=job.retries, faults=job.faults,
                      waited_for_credits_s=held, settings=settings)
    if decision.wait_s is None:
        log.warning("job %s (music %s) failed: %s [%s]", job.job_id, job.music_task_id,
                    error, decision.reason, extra=job.log_fields("failed"))
        _note(context, job, _step_event(job, error))
        return _end(run, context.store, error=error)
    _pause_cluster(error, decision.wait_s)
    reason = WaitReason.parse(error.kind)
    changes: dict[str, Any] = {"retries": job.retries + 1, "wait_reason": reason}
    if rule_for(error).counted:
        changes["faults"] = job.faults + 1
    if isinstance(error, errors.OutOfCredits) and job.hold_since is None:
        changes["hold_since"] = now
    run.wait(decision.wait_s, timeline=[
        _step_event(job, error),
        _wait_event(reason.value if reason else error.kind, decision.wait_s)], **changes)
    log.warning("job %s (music %s) retries in %.1fs: %s [%s]", job.job_id, job.music_task_id,
                decision.wait_s, error, decision.reason, extra=job.log_fields("retry"))
    return _shown(context, wait_of(job, reason or WaitReason.PAUSED, decision.wait_s))


def _pause_cluster(error: errors.CoverError, wait_s: float) -> None:
    """What an error does to every other worker (the rule's `Effect`)."""
    effect = rule_for(error).effect
    limiter = get_limiters().generate
    reason = WaitReason.parse(error.kind) or WaitReason.PAUSED
    if effect is Effect.PAUSE_ALL and limiter.pause_all(wait_s, reason):
        log.warning("pausing every worker for %.1fs: %s", wait_s, error)
        metrics.inc("pauses_total", reason=error.kind)
    if effect is Effect.HOLD_CREDITS and limiter.hold_credits(reason):
        log.warning("holding every generate until credits return: %s", error)
        metrics.inc("pauses_total", reason=error.kind)


def _shown(context: RunContext, wait: Wait) -> Wait:
    """Show `wait` in Celery's result backend (unless the job ended meanwhile)."""
    context.show(wait)
    return wait
