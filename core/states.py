"""Every state and reason the project writes, as enums (never bare strings).

`JobState` is what the app sees in ``get_cover(...)["state"]``; `WaitReason` is
``waiting_for``, the limiter's answer and the ``reason`` label of the limiter
metrics; `CeleryState` names the two custom states Celery's tools (result backend,
task events) show while a job waits.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a cover job is. `SUCCEEDED` and `FAILED` are final."""

    QUEUED = "queued"  #: accepted, not yet submitted to Kie (or waiting to retry the submit)
    SUBMITTED = "submitted"  #: Kie accepted it; waiting for the callback or a poll
    SUCCEEDED = "succeeded"  #: images are known
    FAILED = "failed"  #: ended without a cover; see the job's ``error``

    @property
    def final(self) -> bool:
        """True for SUCCEEDED and FAILED."""
        return self in (JobState.SUCCEEDED, JobState.FAILED)


class WaitReason(StrEnum):
    """Why a job is not being worked on right now.

    The first group holds a job back before Kie is called (the cluster-wide limiter
    or a pause); the second is a wait after an answer; `COVER` is a submitted job
    waiting for Kie to finish its cover.
    """

    RATE_SLOT = "rate_slot"  #: its turn under our own limit (KIE_RATE_LIMIT) has not come
    RATE_LIMITED = "rate_limited"  #: Kie answered 429: every worker pauses
    MAINTENANCE = "maintenance"  #: Kie answered 455: every worker pauses
    PAUSED = "paused"  #: a cluster-wide pause whose reason was not recorded
    OUT_OF_CREDITS = "out_of_credits"  #: 402: generates held until credits return
    DAILY_CAP = "daily_cap"  #: 433: generates held until credits return
    UPSTREAM = "upstream"  #: 5xx, network fault or malformed answer: backoff
    COVER = "cover"  #: submitted; Kie is still making the cover

    @classmethod
    def parse(cls, value: str | None) -> WaitReason | None:
        """The reason named `value`; None for an empty value; `PAUSED` for an unknown one."""
        if not value:
            return None
        try:
            return cls(value)
        except ValueError:
            return cls.PAUSED


#: Waits caused by the account or Kie, not by this job: a job in one of these is
#: "waiting", not "in progress", in a batch's progress.
HELD_BACK: frozenset[WaitReason] = frozenset({
    WaitReason.RATE_SLOT, WaitReason.RATE_LIMITED, WaitReason.MAINTENANCE, WaitReason.PAUSED,
    WaitReason.OUT_OF_CREDITS, WaitReason.DAILY_CAP,
})


class CeleryState(StrEnum):
    """Custom states of a job in Celery's result backend (`AsyncResult.state`).

    Neither is a Celery built-in, so `AsyncResult.get()` keeps waiting through both.
    """

    WAITING = "WAITING"  #: held back: a rate limit, a pause, credits or a fault's backoff
    SUBMITTED = "SUBMITTED"  #: Kie has the cover; waiting for it (its next poll)
