"""The app's outcome notice of each ended job: its lock, delivery mark and give-up.

`JobStore.finish` puts an ended job's notice in `Due.NOTICES` and takes its lock
for the process that ended it, in the same step; this class covers the rest.
"""

from __future__ import annotations

import time

import redis

from kie_covers.config import keys
from kie_covers.store.due import Due
from kie_covers.store.record import Job, encode_fields, from_flat
from kie_covers.store.record import flat as _flat
from kie_covers.store.scripts import register


class Notices:
    """Locks and marks of the app's notices.

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        lock_s: seconds a notice lock is held (COVERS_NOTIFY_TIMEOUT-based; default 30).
    """

    def __init__(self, client: redis.Redis, lock_s: float = 30.0) -> None:
        self.redis = client
        self.lock_s = lock_s
        self._begin = register(client, "begin_notice")

    def begin(self, job_id: str) -> Job | str:
        """Take a job's notice lock for `lock_s` seconds to deliver its notice.

        Returns:
            The ended record to deliver; ``"busy"`` if another process holds the lock;
            ``"nothing"`` if there is nothing to deliver (no job, not ended, delivered
            or given up; it is taken out of the due set).
        """
        begun = self._begin(keys=[keys.notify_lock(job_id), keys.job(job_id), Due.NOTICES.key],
                            args=[int(self.lock_s * 1000), job_id])
        if isinstance(begun, str):
            return begun
        return from_flat(begun) or "nothing"

    def delivered(self, job_id: str) -> None:
        """Mark a notice delivered, out of the due set, its lock released (one round
        trip)."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), items=_flat(encode_fields({"notified_at": now,
                                                                "updated_at": now})))
        pipe.zrem(Due.NOTICES.key, job_id)
        pipe.delete(keys.notify_lock(job_id))
        pipe.execute()

    def gave_up(self, job_id: str, reason: str) -> None:
        """Record why a notice was given up and take it out of the due set."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), items=_flat(encode_fields({"notice_error": reason,
                                                                "updated_at": now})))
        pipe.zrem(Due.NOTICES.key, job_id)
        pipe.execute()

    def unlock(self, job_id: str) -> None:
        """Release a notice's lock (after a try that did not deliver)."""
        self.redis.delete(keys.notify_lock(job_id))
