"""One rate limit for the whole cluster, kept in Redis.

Kie rejects (HTTP 429), rather than queues, what goes over its limit, and
Celery's own ``rate_limit`` is per worker. `RateLimiter` is shared by every
worker process on every host that uses the same Redis. Each decision is one
Lua script that reads Redis's own clock (``TIME``), so hosts with skewed clocks
still agree.

How a decision is made (`RateLimiter.acquire`):

1. A cluster-wide **pause** (after a 429 or a 455) stops everyone until it ends.
2. For generates, a **credits hold** (after a 402/433) stops everyone; one
   caller at a time is told to ``probe`` the credit endpoint.
3. A job without a ticket **reserves a slot**: the earliest time at which one
   more call keeps every window of ``per_seconds`` at or under ``limit``
   (exact sliding window over all reservations). Jobs are served in the order
   they reserved, so nobody starves, and a crowd of waiting jobs does not wake
   up at once.
4. When its slot has come, the call passes only if the exact sliding window
   of calls really let through (``sent``) has room; this absorbs the jitter
   between a slot and the moment a worker gets to it.

Windows are ``per_seconds + margin_s`` long, so network jitter between our
send and Kie's count does not push Kie's own window over the limit.

This is the status limiter. The generate limiter, `kie_covers.store.fair.FairLimiter`,
keeps 1, 2, 4 and the windows but replaces 3: it hands slots out by priority lane,
tenant and arrival instead of reservation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis

from kie_covers.config import keys
from kie_covers.core.states import WaitReason
from kie_covers.store.scripts import register

#: The fair limiter's answer for a job it parked in its queue.
QUEUED = "queued"
#: The fair limiter's answer for a granted job that came before the window has room.
GRANTED = "granted"


@dataclass(frozen=True)
class Place:
    """Where a job waits its turn (`kie_covers.store.fair.FairLimiter`; a plain
    `RateLimiter` serves in reservation order and ignores it).

    Attributes:
        lane: ``interactive`` (the default) or ``bulk``.
        tenant: the tenant id, or None (the default) for the default tenant.
        arrival_us: when the job was created (unix us): its order within its tenant;
            0 (the default) means now.
    """

    lane: str = "interactive"
    tenant: str | None = None
    arrival_us: int = 0


class Verdict(StrEnum):
    """What a caller of `RateLimiter.acquire` is to do."""

    GO = "ok"  #: make the call now
    PROBE = "probe"  #: check the account's credits first, then ask again
    WAIT = "wait"  #: ask again after `Gate.wait_s` (see `Gate.reason`)

@dataclass(frozen=True)
class Gate:
    """A limiter's answer.

    Attributes:
        wait_ms: milliseconds to wait before asking again; 0 unless `verdict` is WAIT.
        verdict: go, probe the credits, or wait.
        reason: why to wait: `WaitReason.RATE_SLOT` (this job's slot under the limit
            has not come), the reason of a cluster-wide pause (``rate_limited`` after a
            429, ``maintenance`` after a 455), or ``out_of_credits`` (held until a
            credit check finds credits); None unless waiting.
        parked: True when the job waits in the fair limiter's queue: a grant makes it
            due before `wait_ms` (which is only a safety net); default False.
        granted: True when the job holds the fair limiter's grant, handed out a little
            before the window has room: `wait_ms` is short and worth waiting out in
            the run; default False.
    """

    wait_ms: int
    verdict: Verdict
    reason: WaitReason | None = None
    parked: bool = False
    granted: bool = False

    @property
    def go(self) -> bool:
        """True when the call may be made now."""
        return self.verdict is Verdict.GO

    @property
    def wait_s(self) -> float:
        """The wait in seconds."""
        return self.wait_ms / 1000.0

    @classmethod
    def from_script(cls, wait_ms: int, answer: str) -> Gate:
        """The gate for the acquire script's reply ``{wait ms, answer}``."""
        if answer == Verdict.GO.value:
            return cls(0, Verdict.GO)
        if answer == Verdict.PROBE.value:
            return cls(0, Verdict.PROBE)
        if answer == QUEUED:
            return cls(wait_ms, Verdict.WAIT, WaitReason.RATE_SLOT, parked=True)
        if answer == GRANTED:
            return cls(wait_ms, Verdict.WAIT, WaitReason.RATE_SLOT, granted=True)
        return cls(wait_ms, Verdict.WAIT, WaitReason.parse(answer) or WaitReason.PAUSED)


class RateLimiter:
    """A cluster-wide limit of `limit` calls per `per_seconds`.

    Args:
        client: Redis (shared by every worker that must share the limit).
        name: the limiter's name in its Redis keys (``generate``, ``status``).
        limit: calls allowed in any window.
        per_seconds: the window, in seconds.
        margin_s: seconds added to the window to absorb network jitter (default 0.1).
        gate_on_credits: whether the credits hold stops this limiter's calls.
        probe_every_s: seconds between credit checks while credits are held.
    """

    def __init__(self, client: redis.Redis, name: str, limit: int, per_seconds: float,
                 margin_s: float = 0.1, gate_on_credits: bool = False,
                 probe_every_s: float = 60.0) -> None:
        self.redis = client
        self.name = name
        self.limit = limit
        self.per_seconds = per_seconds
        self.window_ms = int((per_seconds + margin_s) * 1000)
        self.gate_on_credits = gate_on_credits
        self.probe_every_ms = max(1, int(probe_every_s * 1000))
        self._acquire = register(client, "acquire")
        self._pause = register(client, "pause")

    def acquire(self, job_id: str, count: tuple[str, str] | None = None,
                place: Place | None = None) -> Gate:
        """Ask to make one call for `job_id` now (see the module docstring).

        Args:
            count: (hash key, field): when the call may go, that counter gets one
                more in the same step (a job's ``attempts`` or ``polls``).
            place: the job's lane and tenant; ignored here (reservation order), used by
                `kie_covers.store.fair.FairLimiter`.
        """
        extra_keys, extra_args = ([count[0]], [count[1]]) if count else ([], [])
        wait_ms, reason = self._acquire(
            keys=[keys.rate_sent(self.name), keys.rate_slots(self.name),
                  keys.rate_tickets(self.name), keys.PAUSE, keys.CREDITS_HOLD,
                  keys.CREDITS_PROBE, *extra_keys],
            args=[job_id, self.limit, self.window_ms, "1" if self.gate_on_credits else "0",
                  self.probe_every_ms, max(3_600_000, self.window_ms * 10), *extra_args],
        )
        return Gate.from_script(int(wait_ms), str(reason))


    def pause_all(self, seconds: float, reason: WaitReason) -> bool:
        """Stop every worker's calls to Kie for `seconds` (keeps a longer pause in force).

        Returns:
            True if this call set or lengthened the pause.
        """
        return bool(self._pause(keys=[keys.PAUSE], args=[max(1, int(seconds * 1000)),
                                                          reason.value]))

    def hold_credits(self, reason: WaitReason) -> bool:
        """Stop all generates until a credit check finds credits. True if newly held."""
        return bool(self.redis.set(keys.CREDITS_HOLD, reason.value, nx=True))

    def release_credits(self) -> None:
        """Let generates flow again (a credit check found credits)."""
        self.redis.delete(keys.CREDITS_HOLD, keys.CREDITS_PROBE)
