"""The retry policy, as declared data: which error waits how long, and when to give up.

`RETRY_POLICY` is read top to bottom; the first class an error is an instance
of decides. `decide` turns the rule into a wait in seconds, or None for "fail
now". Waits never sleep in a worker: the job goes back to the due set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from kie_covers.core import errors


class RetryLimits(Protocol):
    """The settings the policy reads (`kie_covers.config.Settings` has them all)."""

    @property
    def backoff_base(self) -> float:
        """Seconds: the first backoff's ceiling (COVERS_BACKOFF_BASE)."""

    @property
    def backoff_max(self) -> float:
        """Seconds: the longest single backoff (COVERS_BACKOFF_MAX)."""

    @property
    def max_attempts(self) -> int:
        """Counted faults in a row a job survives (COVERS_MAX_ATTEMPTS)."""

    @property
    def maintenance_pause(self) -> float:
        """Seconds to wait after a 455 without Retry-After (COVERS_MAINTENANCE_PAUSE)."""

    @property
    def credits_max_wait(self) -> float:
        """Seconds a job waits for credits before it fails (COVERS_CREDITS_MAX_WAIT)."""


class Wait(StrEnum):
    """How a rule computes its wait."""

    BACKOFF = "backoff"  #: exponential backoff with full jitter
    RETRY_AFTER_OR_BACKOFF = "retry_after_or_backoff"  #: Kie's Retry-After, else backoff
    RETRY_AFTER_OR_PAUSE = "retry_after_or_pause"  #: Retry-After, else COVERS_MAINTENANCE_PAUSE
    CREDITS = "credits"  #: re-check credits every pause, up to COVERS_CREDITS_MAX_WAIT
    NEVER = "never"  #: fail at once


class Effect(StrEnum):
    """What an error does to every other worker."""

    NONE = "none"
    PAUSE_ALL = "pause_all"  #: nobody calls Kie until the wait is over
    HOLD_CREDITS = "hold_credits"  #: nobody generates until a credit check finds credits


@dataclass(frozen=True)
class RetryRule:
    """How to treat one branch of the error taxonomy.

    Attributes:
        wait: how the wait is computed.
        counted: whether the error counts toward COVERS_MAX_ATTEMPTS.
        effect: what it does to the rest of the cluster.
    """

    wait: Wait
    counted: bool = False
    effect: Effect = Effect.NONE


RETRY_POLICY: tuple[tuple[type[errors.CoverError], RetryRule], ...] = (
    (errors.RateLimited, RetryRule(Wait.RETRY_AFTER_OR_BACKOFF, effect=Effect.PAUSE_ALL)),
    (errors.Maintenance, RetryRule(Wait.RETRY_AFTER_OR_PAUSE, effect=Effect.PAUSE_ALL)),
    (errors.UpstreamError, RetryRule(Wait.BACKOFF, counted=True)),
    (errors.OutOfCredits, RetryRule(Wait.CREDITS, effect=Effect.HOLD_CREDITS)),
    (errors.CoverError, RetryRule(Wait.NEVER)),
)


def rule_for(error: errors.CoverError) -> RetryRule:
    """The first rule whose class `error` is an instance of."""
    for cls, rule in RETRY_POLICY:
        if isinstance(error, cls):
            return rule
    return RetryRule(Wait.NEVER)


def full_jitter(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
                ) -> float:
    """Seconds before retry number `attempt` (1-based): uniform in [0, min(cap, base*2^(n-1))]."""
    ceiling = min(cap_s, base_s * (2 ** max(0, min(attempt - 1, 30))))
    return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True)
class Decision:
    """What to do after an error: wait `wait_s` seconds, or fail (`wait_s` None)."""

    wait_s: float | None
    reason: str


def decide(
    error: errors.CoverError,
    *,
    retries: int,
    faults: int,
    waited_for_credits_s: float,
    settings: RetryLimits,
    rng: random.Random | None = None,
) -> Decision:
    """Apply the policy.

    Args:
        error: what happened.
        retries: waits this job already had in a row (for the backoff exponent).
        faults: counted errors this job already had in a row (before this one).
        waited_for_credits_s: seconds this job has already waited for credits.
        settings: limits and backoff settings.
    """
    rule = rule_for(error)
    backoff = full_jitter(retries + 1, settings.backoff_base, settings.backoff_max, rng)
    if rule.wait is Wait.NEVER:
        return Decision(None, f"{error.kind} is not retried")
    if rule.counted and faults + 1 >= settings.max_attempts:
        return Decision(None, f"{error.kind}: gave up after {faults + 1} attempts")
    if rule.wait is Wait.BACKOFF:
        return Decision(backoff, f"{error.kind}: backoff")
    if rule.wait is Wait.RETRY_AFTER_OR_BACKOFF:
        if error.retry_after is not None:
            return Decision(error.retry_after, f"{error.kind}: Retry-After")
        return Decision(backoff, f"{error.kind}: backoff")
    if rule.wait is Wait.RETRY_AFTER_OR_PAUSE:
        if error.retry_after is not None:
            return Decision(error.retry_after, f"{error.kind}: Retry-After")
        return Decision(settings.maintenance_pause, f"{error.kind}: pause")
    # CREDITS
    if waited_for_credits_s >= settings.credits_max_wait:
        return Decision(None, f"{error.kind}: waited {waited_for_credits_s:.0f}s for credits")
    remaining = settings.credits_max_wait - waited_for_credits_s
    wait = error.retry_after if error.retry_after is not None else settings.maintenance_pause
    return Decision(max(0.05, min(wait, remaining)),
                    f"{error.kind}: waiting for credits")
