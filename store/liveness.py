"""Which worker processes are alive, which jobs each holds, and handing a dead one's back.

Every worker process is a *holder* with an id (`holder_id`) and a heartbeat: its entry
in the sorted set `kie_covers.config.keys.BEATS`, scored by Redis's clock at its newest
beat and renewed every COVERS_HEARTBEAT_INTERVAL seconds by a thread
(`kie_covers.runtime.heartbeat`). Each job a holder holds is in its held set
(`kie_covers.config.keys.held`): a Celery worker's main process ties each cover message
it reserves or prefetches, a pool process each run it begins (`JobStore.begin`), whose
run lock token then starts with ``<holder>#``.

A holder whose heartbeat is more than COVERS_DEAD_AFTER seconds old is dead (killed,
host lost). `Liveness.reap`, run by every live worker's dispatcher, hands its jobs back
in one Lua script: each job still in the due set becomes due now (the dispatcher sends
it again at once), each run lock it took is released, and its entry and held set go.
A repeat is safe: the run lock and Kie's "already generated" answer keep it to one
payment. A live holder in a slow call keeps beating (the beat is a thread), so it is
never taken over.

The live holders are the registry a "live workers" gauge reads: `Liveness.live`
(``role="worker"`` gives one per Celery worker, ``"pool"`` its pool processes).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import redis

from kie_covers.config import keys
from kie_covers.store.due import Due, due_ms
from kie_covers.store.scripts import register

#: Holder roles: a Celery worker's main process (it reserves messages) and its pool
#: processes (they run the jobs).
ROLES = ("worker", "pool")
#: Dead holders handed back per `Liveness.reap` call (the rest go in the next call).
REAP_BATCH = 50
#: Characters a node name may keep in a holder id (``|`` and ``#`` are separators).
_UNSAFE = re.compile(r"[|#\s]")


def holder_id(node: str, role: str, pid: int | None = None) -> str:
    """A new holder id: ``<node>|<role>|<pid>|<random token>`` (unique per process start).

    Args:
        node: the Celery node name (e.g. ``w1@host``); ``|``, ``#`` and spaces become ``_``.
        role: one of `ROLES`.
        pid: the process id (default: this process's).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    pid = os.getpid() if pid is None else pid
    return f"{_UNSAFE.sub('_', node)}|{role}|{pid}|{secrets.token_hex(4)}"


def lock_token(holder: str | None) -> str:
    """A run lock token; taken by `holder`, it starts with ``<holder>#`` so a hand-back
    can release it."""
    token = secrets.token_hex(8)
    return token if holder is None else f"{holder}#{token}"


def fresh_holders(clock: tuple[int, int], beats: Iterable[tuple[str, float]],
                  dead_after_s: float) -> list[str]:
    """The holders whose beat is fresh, in `beats`' order.

    Args:
        clock: Redis's TIME reply (seconds, microseconds), read with `beats`.
        beats: ``ZRANGE keys.BEATS 0 -1 WITHSCORES`` (holder, beat ms on Redis's clock).
        dead_after_s: seconds after its last beat when a holder is dead.
    """
    seconds, micros = clock
    fresh_from = int(seconds) * 1000 + int(micros) // 1000 - int(dead_after_s * 1000)
    return [holder for holder, at in beats if at >= fresh_from]


def worker_nodes(holders: Iterable[str]) -> list[str]:
    """The node names of the Celery workers among `holders` (holder ids), sorted, once
    each: a worker's main process is its one ``worker`` holder."""
    return sorted({h.split("|", 1)[0] for h in holders if h.split("|")[1:2] == ["worker"]})


class Reaped(NamedTuple):
    """One dead holder handed back by `Liveness.reap`."""

    holder: str
    #: Its held jobs that went back to the due set (ended ones are not counted).
    jobs: int


class Liveness:
    """Heartbeats, held sets and hand-backs (see the module docstring).

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        dead_after_s: seconds without a heartbeat after which a holder is dead
            (COVERS_DEAD_AFTER, default 5).
    """

    def __init__(self, client: redis.Redis, dead_after_s: float) -> None:
        self.redis = client
        self.dead_after_s = dead_after_s
        self._beat = register(client, "beat")
        self._reap = register(client, "reap")
        self._leave = register(client, "leave")
        self._give_back = register(client, "give_back")

    def beat(self, holder: str) -> bool:
        """Renew `holder`'s heartbeat (Redis's clock).

        Returns:
            True when it was not registered: its first beat, or it had been taken for
            dead (its jobs were handed back meanwhile).
        """
        return bool(self._beat(keys=[keys.BEATS], args=[holder]))

    def tie(self, holder: str, job_ids: Iterable[str]) -> None:
        """Record that `holder` holds `job_ids`."""
        ids = list(job_ids)
        if ids:
            self.redis.sadd(keys.held(holder), *ids)

    def untie(self, holder: str, job_ids: Iterable[str]) -> None:
        """Record that `holder` no longer holds `job_ids`."""
        ids = list(job_ids)
        if ids:
            self.redis.srem(keys.held(holder), *ids)

    def held(self, holder: str) -> set[str]:
        """The job ids `holder` holds."""
        return set(self.redis.smembers(keys.held(holder)))  # type: ignore[arg-type]

    def live(self, role: str | None = None) -> list[str]:
        """Holder ids whose heartbeat is fresh, oldest beat first; only `role`'s if given."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(keys.BEATS, 0, -1, withscores=True)
        clock, beats = pipe.execute()
        fresh = fresh_holders(clock, beats, self.dead_after_s)
        return [h for h in fresh if role is None or h.split("|")[1:2] == [role]]

    def live_nodes(self) -> list[str]:
        """The node names (``name@host``) of the Celery workers whose main process has a
        fresh heartbeat, sorted: what a "live workers" gauge counts."""
        return worker_nodes(self.live("worker"))

    def reap(self, limit: int = REAP_BATCH) -> list[Reaped]:
        """Hand back the jobs of every holder whose heartbeat lapsed (at most `limit`).

        Each job still waiting (in the due set) becomes due now and its run lock, if the
        dead holder took it, is released; the holder's entry and held set are removed.
        Does nothing while Redis has been up less than the dead-after time (after a
        restart every beat is old until the live processes beat again).
        """
        flat = self._reap(keys=[keys.BEATS, Due.JOBS.key],
                          args=[int(self.dead_after_s * 1000), due_ms(0),
                                keys.held(""), keys.lock(""), limit])
        return [Reaped(str(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    def leave(self, holder: str, give_back: Sequence[str] | None = None) -> int:
        """`holder` leaves (warm shutdown): remove its heartbeat and held set.

        Args:
            give_back: the jobs to make due now (their run locks, if `holder` took them,
                are released); None gives back every job it holds.

        Returns:
            How many jobs went back to the due set (ended ones are not counted).
        """
        whole = give_back is None
        return int(self._leave(
            keys=[keys.BEATS, Due.JOBS.key, keys.held(holder)],
            args=[holder, due_ms(0, time.time()), keys.lock(""), "1" if whole else "0",
                  *(give_back or ())]))

    def give_back(self, holder: str, job_ids: Sequence[str]) -> int:
        """Live `holder` gives back `job_ids`, which it holds but no longer runs: they are
        due now, its run locks on them are released, and they leave its held set.

        Returns:
            How many jobs went back to the due set (ended ones are not counted).
        """
        if not job_ids:
            return 0
        return int(self._give_back(keys=[Due.JOBS.key, keys.held(holder)],
                                   args=[holder, due_ms(0), keys.lock(""), *job_ids]))
