"""One step of a cover job, as a pure outcome: submit it, or look at its progress.

`advance` passes the cluster-wide limiter, makes at most one call to Kie and
says what happened; it changes nothing in the job's record (the run that holds
the job applies the outcome, `kie_covers.services.cover_run`). No step sleeps
longer than a few milliseconds.

Outcomes: `GenerateAccepted` (Kie took the generate: the client's own answer),
`Done` (images known), `Later` (look again in some seconds), `Throttled` (the
limiter says not yet: neither a failure nor an attempt), `Failed` (a typed error,
for the retry policy).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from kie_covers.config import Settings
from kie_covers.core import errors
from kie_covers.core.answers import interpret_callback
from kie_covers.core.states import JobState, WaitReason
from kie_covers.runtime.callback_secret import callback_url_for
from kie_covers.runtime.connections import Limiters
from kie_covers.runtime.kie_client import FAILED, SUCCESS, GenerateAccepted, KieClient
from kie_covers.store.credits import record_check
from kie_covers.store.limiter import Place, RateLimiter, Verdict
from kie_covers.store.record import Job

log = logging.getLogger("covers.step")

#: Limiter waits up to this many seconds are waited out in the step (see `gate`).
INLINE_WAIT_MAX_S = 0.025
#: At most this many such short waits per step.
INLINE_WAITS = 3
#: A job holding its generate grant waits up to this many seconds in the step: the
#: grant comes a little before the room (`kie_covers.store.fair.GRANT_LEAD_S`), so that
#: the call goes the moment the window has room.
GRANTED_WAIT_MAX_S = 0.25


@dataclass(frozen=True)
class Done:
    """The cover is ready."""

    images: list[str]


@dataclass(frozen=True)
class Later:
    """Nothing more to do now; look again in `seconds`."""

    seconds: float
    reason: WaitReason = WaitReason.COVER


@dataclass(frozen=True)
class Throttled:
    """The limiter says not now: wait `wait_s` seconds. Not a failure, not an attempt.

    `parked`: the job waits in the fair limiter's queue; its grant makes it due sooner
    (default False).
    """

    wait_s: float
    reason: WaitReason
    parked: bool = False


@dataclass(frozen=True)
class Failed:
    """The step failed with a typed error; the retry policy decides what follows."""

    error: errors.CoverError


Outcome = GenerateAccepted | Done | Later | Throttled | Failed


def advance(job: Job, client: KieClient, limiters: Limiters, settings: Settings,
            count: tuple[str, str]) -> Outcome:
    """Do the job's next step: submit when queued, poll when submitted.

    Args:
        count: (hash key, field) of the job's counter of this step's call
            (``attempts`` or ``polls``, from `JobStore.counter_key`), counted by the
            limiter in the same round trip that lets the call go.
    """
    try:
        if job.state is JobState.QUEUED:
            throttled = gate(limiters.generate, job, client, count)
            if throttled is not None:
                return throttled
            # With COVERS_CALLBACK_URL, the URL names the job and carries its token, so
            # only Kie (which got the URL) can end the job by a callback.
            return client.generate(job.music_task_id,
                                   callback_url_for(settings, job.job_id) or job.callback_url)
        throttled = gate(limiters.status, job, client, count)
        return throttled if throttled is not None else poll(job, client, settings)
    except errors.CoverError as error:
        return Failed(error)


def gate(limiter: RateLimiter, job: Job, client: KieClient, count: tuple[str, str]
         ) -> Throttled | None:
    """Pass the limiter (None), or say how long to wait (`Throttled`).

    Passing adds one to the job's counter in the same round trip. While the account
    is out of credits, one caller at a time is chosen to check the credit endpoint;
    when credits are back it lifts the hold for everyone.

    Raises:
        OutOfCredits: the account has no credits (still, or held).
    """
    place = place_of(job)
    answer = limiter.acquire(job.job_id, count, place)
    for _ in range(INLINE_WAITS):
        longest = GRANTED_WAIT_MAX_S if answer.granted else INLINE_WAIT_MAX_S
        if answer.reason is not WaitReason.RATE_SLOT or answer.wait_s > longest:
            break
        # A few milliseconds to the slot: going back through the due set would cost
        # more than the wait itself, and each round trip would push later slots back.
        time.sleep(answer.wait_s)
        answer = limiter.acquire(job.job_id, count, place)
    if answer.verdict is Verdict.PROBE:
        left = client.credits()
        record_check(limiter.redis, left)
        if left <= 0:
            raise errors.OutOfCredits(f"still no credits ({left:g} left)", 402)
        limiter.release_credits()
        log.warning("credits are back (%g left): generates resume for every worker", left)
        answer = limiter.acquire(job.job_id, count, place)
    if answer.reason is WaitReason.OUT_OF_CREDITS:
        raise errors.OutOfCredits("the account is out of credits; holding", 402,
                                  answer.wait_s)
    if answer.go:
        return None
    return Throttled(answer.wait_s, answer.reason or WaitReason.PAUSED, answer.parked)


def place_of(job: Job) -> Place:
    """The job's place in the fair limiter: its lane, tenant and arrival (created_at)."""
    return Place(job.priority, job.tenant, int((job.created_at or time.time()) * 1_000_000))


def poll(job: Job, client: KieClient, settings: Settings) -> Done | Later:
    """Ask record-info once; fail as timed out after KIE_POLL_TIMEOUT seconds."""
    if job.cover_task_id is None:
        raise errors.UpstreamError("a submitted job has no cover task id")
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
    return Later(min(settings.kie_poll_interval, settings.kie_poll_timeout - elapsed + 0.01))


def from_callback(body: str) -> Done | Failed:
    """A stored callback body (JSON) as an outcome."""
    try:
        outcome = interpret_callback(json.loads(body))
    except errors.CoverError as error:
        return Failed(error)
    if outcome.error is not None:
        return Failed(outcome.error)
    return Done(outcome.images or [])
