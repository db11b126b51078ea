"""One step of a cover job: submit it, or look at its progress.

`advance` does one step and says what comes next: `Done` (images known),
`Later` (look again in some seconds), or it raises a `tasks.errors.CoverError`
that `tasks.retry` turns into a wait or a failure. No step sleeps.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kie_covers.config import Settings, keys
from kie_covers.core import errors
from kie_covers.core.answers import interpret_callback
from kie_covers.core.states import JobState
from kie_covers.runtime.kie_client import FAILED, SUCCESS, KieClient
from kie_covers.store.jobs import Job, JobStore
from kie_covers.store.limiter import RateLimiter, release_credits
from kie_covers.store.logfields import job_fields

if TYPE_CHECKING:
    from kie_covers.runtime.connections import Limiters

log = logging.getLogger("covers.pipeline")

#: Limiter waits up to this many seconds are waited out in the task (see `gate`).
INLINE_WAIT_MAX_S = 0.025
#: At most this many such short waits per run.
INLINE_WAITS = 3


class Throttled(Exception):
    """The limiter says not now: wait `wait_s` seconds. Not a failure, not an attempt."""

    def __init__(self, wait_s: float, reason: str) -> None:
        super().__init__(f"{reason}: wait {wait_s:.3f}s")
        self.wait_s = wait_s
        self.reason = reason


@dataclass(frozen=True)
class Done:
    """The cover is ready."""

    images: list[str]


@dataclass(frozen=True)
class Later:
    """Nothing more to do now; look again in `seconds`."""

    seconds: float
    reason: str
    #: True when the step already put the job back in the due set and released its
    #: run lock (a submit); otherwise the caller must.
    released: bool = False


Step = Done | Later


def advance(job: Job, store: JobStore, client: KieClient, limiters: Limiters,
            settings: Settings, token: str = "") -> Step:
    """Do the job's next step: submit when queued, poll when submitted.

    Args:
        token: the run lock's token (a submit releases the lock with its record).

    Raises `Throttled` when the cluster-wide limiter says to wait.
    """
    if job.state is JobState.QUEUED:
        gate(limiters.generate, job, store, client, "attempts")
        return submit(job, store, client, settings, token)
    gate(limiters.status, job, store, client, "polls")
    return poll(job, store, client, settings)


def gate(limiter: RateLimiter, job: Job, store: JobStore, client: KieClient,
         counter: str) -> None:
    """Pass the limiter, or raise `Throttled` / `OutOfCredits` saying how long to wait.

    Passing adds one to the job's `counter` (``attempts`` or ``polls``) in the same
    round trip. While the account is out of credits, one caller at a time is chosen
    to check the credit endpoint; when credits are back it lifts the hold for everyone.
    """
    count = (keys.job(job.job_id), counter)
    answer = limiter.acquire(job.job_id, count)
    for _ in range(INLINE_WAITS):
        if answer.reason != "rate_limit" or answer.wait_s > INLINE_WAIT_MAX_S:
            break
        # A few milliseconds to the slot: going back through the due set would cost
        # more than the wait itself, and each round trip would push later slots back.
        time.sleep(answer.wait_s)
        answer = limiter.acquire(job.job_id, count)
    if answer.reason == "probe":
        left = client.credits()
        if left <= 0:
            raise errors.OutOfCredits(f"still no credits ({left:g} left)", 402)
        release_credits(store.redis)
        log.warning("credits are back (%g left): generates resume for every worker", left)
        answer = limiter.acquire(job.job_id, count)
    if answer.reason == "out_of_credits":
        raise errors.OutOfCredits("the account is out of credits; holding", 402,
                                  answer.wait_s)
    if not answer.go:
        raise Throttled(answer.wait_s, answer.reason)


def submit(job: Job, store: JobStore, client: KieClient, settings: Settings,
           token: str = "") -> Step:
    """Send the generate call once, and record the cover task id Kie gives.

    A job re-run after a crash that follows an accepted generate gets Kie's 400
    naming the existing cover, and tracks that instead of paying again.
    """
    answer = client.generate(job.task_id, settings.callback_url or job.callback_url)
    marked = store.mark_submitted(job.job_id, answer.cover_task_id,
                                  settings.kie_poll_interval, token)
    log.info("job %s (music %s) submitted: cover task %s%s", job.job_id, job.task_id,
             answer.cover_task_id, " (already existed)" if answer.existing else "",
             extra=job_fields(job, "submitted"))
    if marked.early is not None:
        return from_callback(json.loads(marked.early))
    return Later(settings.kie_poll_interval, "cover", released=marked.changed)


def poll(job: Job, store: JobStore, client: KieClient, settings: Settings) -> Step:
    """Ask record-info once; fail as timed out after KIE_POLL_TIMEOUT seconds."""
    assert job.cover_task_id is not None, "a submitted job has a cover task id"
    info = client.record_info(job.cover_task_id)
    if info.success_flag == SUCCESS:
        return Done(info.images)
    if info.success_flag == FAILED:
        raise errors.GenerationFailed(info.error_message or "cover generation failed",
                                      info.error_code)
    elapsed = time.time() - (job.submitted_at or time.time())
    if elapsed >= settings.kie_poll_timeout:
        raise errors.CoverTimedOut(
            f"cover {job.cover_task_id} not finished after {elapsed:.0f}s "
            f"(KIE_POLL_TIMEOUT={settings.kie_poll_timeout:g}s)")
    return Later(min(settings.kie_poll_interval, settings.kie_poll_timeout - elapsed + 0.01),
                 "cover")


def from_callback(body: object) -> Done:
    """A stored callback body as a step result (raises its error on failure)."""
    outcome = interpret_callback(body)
    if outcome.error is not None:
        raise outcome.error
    return Done(outcome.images or [])
