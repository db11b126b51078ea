"""The cluster overview: one typed snapshot of what the whole cluster is doing.

`read_overview` reads, in one pipelined round trip and without scanning job
keys: jobs by state, waiting jobs by reason with the age of the oldest, the due
sets' depths, the limiters' use, any cluster pause, the credits hold and the
newest credit check, quarantined broker messages and live workers. The console
and the ``covers metrics`` gauges show it.

Counting without scanning rests on indexes the job scripts keep in the same step
as each change (``lua/indexes.lua``; keys `keys.state_index`, `keys.waiting`):

- one sorted set per `JobState`: a job is in exactly one. Queued and submitted
  jobs are scored by when they entered the state, so the oldest is the first
  entry. Succeeded and failed records expire (COVERS_RESULT_TTL,
  COVERS_FAILURE_TTL), so their entries are scored by the expiry time and
  counted from now on (``ZCOUNT now +inf``); the finish script drops those past
  their time;
- one sorted set per `WaitReason`, scored by when the wait began: a job waiting
  again for the same reason keeps its start, so the oldest entry's age is how
  long a job has been held for that reason.

Jobs recorded before these indexes existed are indexed once by
`kie_covers.store.reindex.index_existing` (the metrics exporter runs it as it starts).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import redis

from kie_covers.config import keys
from kie_covers.core.schemas import BULK, INTERACTIVE
from kie_covers.core.states import JobState, WaitReason
from kie_covers.store.credits import CreditCheck, parse_check
from kie_covers.store.due import Due
from kie_covers.store.fair import GENERATE_LIMITER, parse_grant
from kie_covers.store.liveness import fresh_holders, worker_nodes

#: The generate limiter's latest slots the overview looks at (its grant log).
RECENT_SLOTS = 100
#: The tenants with most of those slots that the overview names.
TOP_TENANTS = 5
#: The states whose index is scored by when the job entered them (not by expiry).
LIVE_STATES = (JobState.QUEUED, JobState.SUBMITTED)


@dataclass(frozen=True)
class LimiterSpec:
    """What the overview needs to know of one cluster-wide limiter.

    Attributes:
        name: its name in its Redis keys (``generate``, ``status``).
        limit: calls allowed in any window.
        window_s: the window in seconds, its margin included (as the limiter counts).
    """

    name: str
    limit: int
    window_s: float


@dataclass(frozen=True)
class LimiterUse:
    """How much of one limiter's window is used: `granted` calls of `limit` in the
    last `window_s` seconds."""

    name: str
    granted: int
    limit: int
    window_s: float

    @property
    def use(self) -> float:
        """`granted` / `limit` (1.0: the window is full)."""
        return self.granted / self.limit if self.limit else 0.0


@dataclass(frozen=True)
class Waiting:
    """Jobs waiting for one reason: how many, and how long the oldest has waited
    (seconds; None when none waits)."""

    count: int
    oldest_age_s: float | None


@dataclass(frozen=True)
class Pause:
    """A cluster-wide pause (after a 429 or a 455): why, and seconds left."""

    reason: WaitReason
    left_s: float


@dataclass(frozen=True)
class Credits:
    """The credits hold and the newest credit check.

    Attributes:
        held: why generates are held for credits (``out_of_credits``,
            ``daily_cap``); None when they are not.
        last_check: the newest credit check of any worker; None if none was kept.
    """

    held: WaitReason | None
    last_check: CreditCheck | None


@dataclass(frozen=True)
class SlotShares:
    """Who got the generate limiter's last `count` slots (its grant log).

    Attributes:
        count: slots looked at (at most `RECENT_SLOTS`; fewer while the log is shorter).
        lanes: slots by lane (``interactive``, ``bulk``; a lane with none is 0).
        tenants: (tenant, slots), most first, at most `TOP_TENANTS`; None is the
            default tenant.
    """

    count: int
    lanes: Mapping[str, int]
    tenants: tuple[tuple[str | None, int], ...]


@dataclass(frozen=True)
class Overview:
    """A snapshot of the cluster, read at `at` (unix seconds).

    Attributes:
        jobs: job records by state (every `JobState`; ended ones until they expire).
        oldest_age_s: for queued and submitted jobs, seconds since the oldest one
            entered that state (None when there is none).
        waiting: jobs by `WaitReason` (every reason), with the oldest wait's age.
        due_jobs: entries of the job due set (every live job has one).
        pending_notices: ended jobs whose app notice is still to be delivered.
        pending_copies: succeeded jobs whose images are still to be copied.
        limiters: each limiter's use of its current window.
        pause: the cluster-wide pause in force, or None.
        credits: the credits hold and the newest credit check.
        quarantined: broker messages set aside as unreadable (`keys.QUARANTINE`).
        recent_slots: who got the generate limiter's latest slots.
        workers: names of the live workers (seen within `dead_after_s`), sorted.
        dead_after_s: seconds after its last heartbeat when a worker stops counting.
    """

    at: float
    jobs: Mapping[JobState, int]
    oldest_age_s: Mapping[JobState, float | None]
    waiting: Mapping[WaitReason, Waiting]
    due_jobs: int
    pending_notices: int
    pending_copies: int
    limiters: tuple[LimiterUse, ...]
    pause: Pause | None
    credits: Credits
    quarantined: int
    recent_slots: SlotShares
    workers: tuple[str, ...]
    dead_after_s: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (times as unix seconds, ages and durations in seconds)."""
        check = self.credits.last_check
        return {
            "at": self.at,
            "jobs": {state.value: n for state, n in self.jobs.items()},
            "oldest_age_s": {state.value: age for state, age in self.oldest_age_s.items()},
            "waiting": {reason.value: {"count": w.count, "oldest_age_s": w.oldest_age_s}
                        for reason, w in self.waiting.items()},
            "due_jobs": self.due_jobs,
            "pending_notices": self.pending_notices,
            "pending_copies": self.pending_copies,
            "limiters": [{"name": u.name, "granted": u.granted, "limit": u.limit,
                          "window_s": u.window_s} for u in self.limiters],
            "pause": None if self.pause is None else {"reason": self.pause.reason.value,
                                                      "left_s": self.pause.left_s},
            "credits": {
                "held": None if self.credits.held is None else self.credits.held.value,
                "checked_at": None if check is None else check.at,
                "left": None if check is None else check.left},
            "quarantined": self.quarantined,
            "recent_slots": {
                "count": self.recent_slots.count, "lanes": dict(self.recent_slots.lanes),
                "tenants": [{"tenant": t, "slots": n} for t, n in self.recent_slots.tenants]},
            "workers": list(self.workers),
            "dead_after_s": self.dead_after_s,
        }


def read_overview(client: redis.Redis, limiters: Sequence[LimiterSpec] = (), *,
                  dead_after_s: float, now: float | None = None) -> Overview:
    """Read the cluster's overview in one pipelined round trip (see the module).

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        limiters: the limiters whose use to read (none by default).
        dead_after_s: seconds after its last heartbeat when a worker no longer counts
            as live (COVERS_DEAD_AFTER, as `kie_covers.store.liveness` counts).
        now: the time to read at (unix seconds; default the clock).
    """
    at = time.time() if now is None else now
    now_ms = int(at * 1000)
    pipe = client.pipeline(transaction=False)
    for state in JobState:
        if state in LIVE_STATES:
            pipe.zcard(keys.state_index(state.value))
            pipe.zrange(keys.state_index(state.value), 0, 0, withscores=True)
        else:
            pipe.zcount(keys.state_index(state.value), f"({now_ms}", "+inf")
    for reason in WaitReason:
        pipe.zcard(keys.waiting(reason.value))
        pipe.zrange(keys.waiting(reason.value), 0, 0, withscores=True)
    for which in (Due.JOBS, Due.NOTICES, Due.COPIES):
        pipe.zcard(which.key)
    for spec in limiters:
        _ask_limiter(pipe, spec, now_ms)
    _ask_holds(pipe)
    pipe.llen(keys.QUARANTINE)
    pipe.lrange(keys.rate_grant_log(GENERATE_LIMITER), -RECENT_SLOTS, -1)
    # Heartbeats are on Redis's clock (store.liveness): read it with them
    pipe.time()
    pipe.zrange(keys.BEATS, 0, -1, withscores=True)
    replies = iter(pipe.execute())

    jobs: dict[JobState, int] = {}
    oldest: dict[JobState, float | None] = {}
    for state in JobState:
        jobs[state] = int(next(replies))
        if state in LIVE_STATES:
            oldest[state] = _age(next(replies), at)
    waiting = {reason: Waiting(int(next(replies)), _age(next(replies), at))
               for reason in WaitReason}
    due_jobs, notices, copies = (int(next(replies)) for _ in range(3))
    uses = tuple(_limiter_use(spec, next(replies)) for spec in limiters)
    pause, credits = _holds(replies)
    return Overview(
        at=at, jobs=MappingProxyType(jobs), oldest_age_s=MappingProxyType(oldest),
        waiting=MappingProxyType(waiting), due_jobs=due_jobs, pending_notices=notices,
        pending_copies=copies, limiters=uses, pause=pause, credits=credits,
        quarantined=int(next(replies)), recent_slots=_slot_shares(next(replies)),
        workers=_live_workers(replies, dead_after_s),
        dead_after_s=dead_after_s)


def _live_workers(replies: Iterator[Any], dead_after_s: float) -> tuple[str, ...]:
    """The live workers' node names from the TIME and heartbeats replies."""
    clock, beats = next(replies), next(replies)
    return tuple(worker_nodes(fresh_holders(clock, beats, dead_after_s)))


def _slot_shares(entries: list[str]) -> SlotShares:
    """`SlotShares` of the grant log entries read."""
    grants = [parse_grant(entry) for entry in entries]
    lanes = Counter({INTERACTIVE: 0, BULK: 0})
    lanes.update(g.lane for g in grants)
    tenants = Counter(g.tenant for g in grants)
    return SlotShares(len(grants), MappingProxyType(dict(lanes)),
                      tuple(tenants.most_common(TOP_TENANTS)))


def _age(first: list[tuple[str, float]], at: float) -> float | None:
    """Seconds since the score (ms) of a ZRANGE 0 0 WITHSCORES reply; None if empty."""
    if not first:
        return None
    return max(0.0, at - float(first[0][1]) / 1000.0)


# --- the limiter's keys, read in small functions (the limiter's layout may change) ---

def _ask_limiter(pipe: Any, spec: LimiterSpec, now_ms: int) -> None:
    """Queue the read of one limiter's calls let through in its current window."""
    window_ms = int(spec.window_s * 1000)
    pipe.zcount(keys.rate_sent(spec.name), f"({now_ms - window_ms}", "+inf")


def _limiter_use(spec: LimiterSpec, granted: object) -> LimiterUse:
    """One limiter's use from its `_ask_limiter` reply."""
    return LimiterUse(spec.name, int(str(granted)), spec.limit, spec.window_s)


def _ask_holds(pipe: Any) -> None:
    """Queue the reads of the cluster pause and the credits hold (`_holds` parses them)."""
    pipe.pttl(keys.PAUSE)
    pipe.get(keys.PAUSE)
    pipe.get(keys.CREDITS_HOLD)
    pipe.hgetall(keys.CREDITS_CHECKED)


def _holds(replies: Any) -> tuple[Pause | None, Credits]:
    """The pause and credits from the replies `_ask_holds` queued, in order."""
    left_ms, reason, held, check = (next(replies) for _ in range(4))
    pause = None
    if int(left_ms) > 0:
        pause = Pause(WaitReason.parse(reason) or WaitReason.PAUSED, int(left_ms) / 1000.0)
    return pause, Credits(WaitReason.parse(held), parse_check(check or {}))
