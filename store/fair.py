"""Fair slots under the one generate limit: priority lanes, then tenants, then arrival.

`FairLimiter` is the generate limiter. It keeps every guarantee of `RateLimiter`
(one atomic Redis decision on Redis's clock for every worker on every host; the
pause and the credits hold; never more than ``limit`` calls in any window of
``per_seconds + margin_s``) but hands the slots out in a fair order instead of
the order jobs asked:

1. **Lanes.** ``interactive`` jobs go before ``bulk`` ones, except that while
   both lanes have jobs waiting, bulk earns ``bulk_min_share`` of a slot per
   slot handed out (COVERS_BULK_MIN_SHARE, default 0.2) and takes one each time
   it has earned a whole one: every fifth slot at 0.2. Neither lane starves.
2. **Tenants.** Within a lane the tenants with jobs waiting take turns (round
   robin), so a tenant's 10,000-job batch holds another tenant's one job back by
   at most one slot per tenant ahead of it.
3. **Arrival.** Within a tenant, first come (the job's ``created_at``), first
   served; a job that asks again after a fault keeps its place.

How: slots are handed out when they are free, not reserved ahead. A new job is
queued at once by the producer, in the step that records it (`FairLimiter.admission`,
or `FairLimiter.admit`): its message is sent only
if its turn has come. A job that asks (`FairLimiter.acquire`: a raw message's,
a retry's) while its turn has not come is put in Redis (a
sorted set per lane and tenant, by arrival; a ring of the tenants with work per
lane) and *parked*: its run puts it in the due set far ahead
(`Gate.parked`, a safety net only) and ends; no worker holds it. Whenever the
window has room, one script (`FairLimiter.grant`, run by every worker's
dispatcher as room opens, and by each ask) picks the next jobs by the rules
above, gives each a **grant** (room kept for it for `GRANT_TTL_S` seconds) and
makes it due now, so a dispatcher sends it at once; its run's ask then uses the
grant and goes. A grant not used in time (its worker died) goes back: the job
takes its place in its queue again. Ended or forgotten jobs leave the queues
when their turn comes, without taking a slot. Every step is O(log n) in the
jobs waiting, so 100,000 waiting jobs cost Redis memory, not time.

The limit holds exactly: a grant is only given while the calls sent in the
window plus the grants not yet used are under the limit, and using a grant turns
one into the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from kie_covers.config import keys
from kie_covers.core.schemas import BULK, INTERACTIVE
from kie_covers.store.limiter import GRANTED, Gate, Place, RateLimiter
from kie_covers.store.scripts import register

#: The generate limiter's name in its Redis keys (the one limiter that is fair).
GENERATE_LIMITER = "generate"
#: Seconds a grant keeps its slot for the granted job before it goes back to its queue.
GRANT_TTL_S = 10.0
#: Seconds before the window has room that the slot is granted: the time a dispatcher's
#: message takes to reach a worker, so the job is ready when the room opens (it waits
#: out the rest in its run, `Gate.granted`) and no time is lost between calls.
GRANT_LEAD_S = 0.05
#: Most queue entries (and expired grants) one script looks at, so that one call stays
#: short even when thousands of ended jobs wait to be dropped.
MAX_LOOKS = 1000
#: The longest park, in seconds (the safety net when a grant could not wake a job).
PARK_MAX_S = 3600.0
#: Slots the grant log keeps (`FairLimiter.recent_grants`): the last this many, about
#: 100 bytes each.
GRANT_LOG_LENGTH = 1000
#: `FairLimiter.admit`'s answer while no worker has asked: send the job's message.
SEND = "send"
#: The default tenant's name in the queue keys (tenant ids start with a letter or digit).
DEFAULT_TENANT = "-"


def sends_now(answer: str) -> bool:
    """Whether a new job's admission (``admit`` in ``store/lua/fair_admit.lua``) answered
    that its message is to be sent now: granted, or `SEND` (no worker has asked yet)."""
    return answer in (GRANTED, SEND)


@dataclass(frozen=True)
class Admission:
    """A new job's admission, for a script that queues it in its own step
    (`FairLimiter.admission`; the producer's enqueue, `JobStore.enqueue_and_admit`).

    Attributes:
        keys: fair_lib.lua's KEYS 1-11.
        args: fair_lib.lua's ARGV 1-10, then the job's lane, tenant (`DEFAULT_TENANT`
            for the default) and arrival (unix us).
    """

    keys: list[str]
    args: list[str | int]


@dataclass(frozen=True)
class SlotGrant:
    """One slot handed out, as the grant log keeps it.

    Attributes:
        at_ms: when (unix ms, Redis's clock); grants of one round share it.
        lane: ``interactive`` or ``bulk``.
        tenant: the job's tenant, None for the default one.
        job_id: the job granted.
    """

    at_ms: int
    lane: str
    tenant: str | None
    job_id: str


def parse_grant(entry: str) -> SlotGrant:
    """One grant log entry (``<ms>\t<lane>\t<tenant>\t<job id>``, see fair_lib.lua)."""
    at_ms, lane, tenant, job_id = entry.split("\t", 3)
    return SlotGrant(int(at_ms), lane, None if tenant == DEFAULT_TENANT else tenant, job_id)


@dataclass(frozen=True)
class GrantRound:
    """What one `FairLimiter.grant` did.

    Attributes:
        granted: the jobs granted a slot (and made due now), in grant order.
        next_in_s: seconds until it is worth calling again (room may open), 0 if
            there is room now, None if no job waits or a hold is on.
    """

    granted: tuple[str, ...]
    next_in_s: float | None


class FairLimiter(RateLimiter):
    """The generate limiter: `RateLimiter`'s limit, slots handed out fairly.

    Args (besides `RateLimiter`'s):
        bulk_min_share: share of slots the bulk lane gets while interactive jobs wait
            too (COVERS_BULK_MIN_SHARE), strictly between 0 and 1; default 0.2.
        park_min_s: the shortest park of a waiting job, in seconds (default 600,
            as COVERS_REDISPATCH_AFTER); longer when many wait (their number times
            the window over the limit), at most `PARK_MAX_S`.
        grant_ttl_s: seconds a grant is kept for its job (default `GRANT_TTL_S`).
    """

    def __init__(self, client: redis.Redis, name: str, limit: int, per_seconds: float,
                 margin_s: float = 0.1, gate_on_credits: bool = False,
                 probe_every_s: float = 60.0, *, bulk_min_share: float = 0.2,
                 park_min_s: float = 600.0, grant_ttl_s: float = GRANT_TTL_S) -> None:
        super().__init__(client, name, limit, per_seconds, margin_s, gate_on_credits,
                         probe_every_s)
        self.bulk_min_share = bulk_min_share
        self.park_min_ms = int(park_min_s * 1000)
        self.grant_ttl_ms = max(1, int(grant_ttl_s * 1000))
        self._fair_acquire = register(client, "fair_acquire")
        self._fair_grant = register(client, "fair_grant")
        self._fair_wake = register(client, "fair_wake")

    def _keys(self) -> list[str]:
        return [keys.rate_sent(self.name), keys.rate_grants(self.name),
                keys.rate_waiting(self.name), keys.rate_fair_state(self.name),
                keys.rate_ring(self.name, INTERACTIVE), keys.rate_ring(self.name, BULK),
                keys.DUE, keys.PAUSE, keys.CREDITS_HOLD, keys.CREDITS_PROBE,
                keys.rate_grant_log(self.name)]

    def _args(self) -> list[str | int]:
        return [self.limit, self.window_ms, "1" if self.gate_on_credits else "0",
                self.grant_ttl_ms, round(self.bulk_min_share * 1000),
                keys.rate_queue_prefix(self.name), keys.job(""), MAX_LOOKS,
                int(GRANT_LEAD_S * 1000), GRANT_LOG_LENGTH]

    def acquire(self, job_id: str, count: tuple[str, str] | None = None,
                place: Place | None = None) -> Gate:
        """Ask to make one generate for `job_id` now.

        Goes (`Verdict.GO`) with the job's grant, or at once when its turn has come;
        with a grant a few ms early, waits that out (`Gate.granted`); else the job is
        queued at `place` (default: interactive, the default tenant, arriving now) and
        parked (`Gate.parked`, waiting for `WaitReason.RATE_SLOT`).

        Args:
            count: (hash key, field): when the call may go, that counter gets one
                more in the same step (a job's ``attempts``).
            place: the job's lane, tenant and arrival.
        """
        wait_ms, answer = self._ask(job_id, count, place, admit=False)
        return Gate.from_script(wait_ms, answer)

    def admit(self, job_id: str, place: Place | None = None) -> bool:
        """Queue a new job (its record exists, state queued) at `place`, in one step.

        Returns:
            True if its turn has come: it holds a grant, and its message is to be sent
            now. False: it waits in Redis (its record says ``rate_slot``) and a
            dispatcher sends it when it is granted; no message, no task run until
            then, so a batch of 10,000 costs the broker nothing while it waits. (Also
            True, without queueing it, while no worker has asked yet: the limit in
            force is the workers', so its run asks with it.)
        """
        return sends_now(self._ask(job_id, None, place, admit=True)[1])

    def admission(self, place: Place | None = None) -> Admission:
        """What a script needs to `admit` a new job at `place` (default: interactive,
        the default tenant, arriving now) in its own step; no round trip."""
        place = place or Place()
        return Admission(self._keys(), [
            *self._args(), place.lane, place.tenant or DEFAULT_TENANT,
            place.arrival_us or int(time.time() * 1_000_000)])

    def _ask(self, job_id: str, count: tuple[str, str] | None, place: Place | None,
             admit: bool) -> tuple[int, str]:
        place = place or Place()
        arrival_us = place.arrival_us or int(time.time() * 1_000_000)
        wait_ms, answer = self._fair_acquire(
            keys=[*self._keys(), *([count[0]] if count else [])],
            args=[*self._args(), job_id, place.lane, place.tenant or DEFAULT_TENANT,
                  arrival_us, self.probe_every_ms, self.park_min_ms,
                  max(self.park_min_ms, int(PARK_MAX_S * 1000)), count[1] if count else "",
                  "1" if admit else "0"])
        return int(wait_ms), str(answer)

    def grant(self) -> GrantRound:
        """Hand the free slots to the jobs waiting (a dispatcher's round; cheap when
        none wait). Granted jobs are made due now in the due set."""
        next_ms, *granted = self._fair_grant(keys=self._keys(), args=self._args())
        next_ms = int(next_ms)
        return GrantRound(tuple(granted), None if next_ms < 0 else next_ms / 1000.0)

    def wake_if_granted(self, job_id: str) -> bool:
        """Make a parked job due now if it was granted while its run parked it (a
        dispatcher's grant between its ask and its park). True if it was."""
        return bool(self._fair_wake(keys=[keys.rate_grants(self.name), keys.DUE],
                                    args=[job_id]))

    def recent_grants(self, count: int = GRANT_LOG_LENGTH) -> list[SlotGrant]:
        """The last `count` slots handed out (at most `GRANT_LOG_LENGTH`), oldest first,
        in the order they were granted: who got the limit lately."""
        entries = self.redis.lrange(keys.rate_grant_log(self.name), -max(1, count), -1)
        return [parse_grant(str(entry)) for entry in entries]

    def waiting(self) -> int:
        """Jobs queued or granted and not yet sent."""
        return int(self.redis.hlen(keys.rate_waiting(self.name)))
