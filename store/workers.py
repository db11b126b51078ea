"""Worker heartbeats: which workers are alive, for the cluster overview.

Each worker's dispatcher thread (`kie_covers.worker.dispatcher`) writes its node
name into one sorted set (`keys.WORKERS`), scored by the time it was last seen
(unix ms), at most every `BEAT_EVERY_S` seconds as it runs its rounds, and takes
it out when the worker stops cleanly. A worker is *live* when it was seen within
`dead_after_s` (3 dispatch intervals, at least `MIN_DEAD_AFTER_S`): a worker
killed, hung or cut off from Redis drops out of the count after that long.
Entries unseen for `FORGET_AFTER_S` are removed by the next beat of any worker.
"""

from __future__ import annotations

import time

import redis

from kie_covers.config import keys

#: Seconds between two heartbeats of one worker, at most (its dispatch interval if
#: shorter).
BEAT_EVERY_S = 1.0
#: The shortest time a worker counts as live after its last heartbeat, in seconds.
MIN_DEAD_AFTER_S = 5.0
#: Seconds after which a silent worker's entry is removed altogether (a day).
FORGET_AFTER_S = 86_400.0


def dead_after_s(dispatch_interval_s: float) -> float:
    """Seconds after its last heartbeat when a worker no longer counts as live:
    3 x COVERS_DISPATCH_INTERVAL, at least `MIN_DEAD_AFTER_S` (5)."""
    return max(MIN_DEAD_AFTER_S, 3 * dispatch_interval_s)


class WorkerBeats:
    """Writes one worker's heartbeats.

    Args:
        client: a `redis.Redis`.
        node: the worker's node name (Celery's ``name@host``).
        every_s: seconds between heartbeats, at most (default `BEAT_EVERY_S`).
    """

    def __init__(self, client: redis.Redis, node: str, every_s: float = BEAT_EVERY_S) -> None:
        self.redis = client
        self.node = node
        self.every_s = every_s
        self._last = float("-inf")

    def beat(self, now: float | None = None) -> bool:
        """Record that this worker is alive, unless it did less than `every_s` ago.

        Returns:
            True when a heartbeat was written.
        """
        moment = time.time() if now is None else now
        if moment - self._last < self.every_s:
            return False
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.WORKERS, {self.node: int(moment * 1000)})
        pipe.zremrangebyscore(keys.WORKERS, "-inf", int((moment - FORGET_AFTER_S) * 1000))
        pipe.execute()
        self._last = moment
        return True

    def gone(self) -> None:
        """Take this worker out of the live set (a clean stop)."""
        self.redis.zrem(keys.WORKERS, self.node)
        self._last = float("-inf")
