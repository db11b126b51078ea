"""The app's outcome notice of each ended job: its lock, delivery mark and give-up.

`JobStore.finish` puts an ended job's notice in `Due.NOTICES` and takes its lock
for the process that ended it, in the same step; this class covers the rest.

Why a notice is never sent twice because a try outlived its lock:

- Whoever tries a notice holds its lock (``keys.notify_lock``) for the whole try.
  `NoticeLock.until` is when this process can be sure the lock still holds, on
  its own monotonic clock, measured from *before* the step that took it: for
  `Notices.begin` the moment the script was sent; for the lock the job's end
  took, the job's ``finished_at`` (stamped before the finish script ran). Redis
  starts the lock's TTL later than either, so the lock outlives ``until``.
- The sender starts a try only when ``now + cap + margin <= until`` (cap:
  COVERS_NOTIFY_TIMEOUT, the total-time cap of one POST; margin: one more cap,
  for the delivery mark to reach Redis), and the POST sends no byte after its
  cap (`kie_covers.runtime.poster`). With the lock at 3 x the cap
  (`Settings.notice_lock`) a try begun right after `begin` ends two caps before
  the lock can expire.
- `begin` also moves the notice's due-set entry to ``now + lease_s`` (the lock
  plus 5 s), in the same script, so the dispatcher does not hand the notice to
  another process while the try runs; if this process dies, the lock expires
  and the notice comes due again 5 s later.
- Locks are released by token (`unlock`): a try never frees a lock it does not
  hold. The lock the finish script takes holds `FINISH_TOKEN`, the one
  `begin` takes a random token.

What remains is the at-least-once edge every webhook has: an app that took the
notice but whose answer did not arrive within the cap (or a delivery mark that
never reached Redis) gets the notice again on the next try, with the same
``X-Covers-Notice-Id``, so it can tell.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import redis

from kie_covers.config import keys
from kie_covers.store.due import Due, due_ms
from kie_covers.store.record import Job, encode_fields, from_flat
from kie_covers.store.record import flat as _flat
from kie_covers.store.scripts import register

#: The value of the notice lock the finish script takes for the process that ended
#: the job (`Job.notice_locked`).
FINISH_TOKEN = "1"
#: Seconds between a notice lock's expiry and the moment its due-set entry comes due
#: (as in `Settings.notice_lease`).
LEASE_MARGIN_S = 5.0


@dataclass(frozen=True)
class NoticeLock:
    """A held notice lock and the record to deliver under it.

    Attributes:
        job: the ended record, as read when the lock was taken.
        token: the lock's value (release with it).
        until: `time.monotonic()` seconds up to which the lock surely holds.
    """

    job: Job
    token: str
    until: float

    def left(self) -> float:
        """Seconds the lock surely holds from now (negative once past `until`)."""
        return self.until - time.monotonic()


class Notices:
    """Locks and marks of the app's notices.

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        lock_s: seconds a notice lock is held (`Settings.notice_lock`, 3 x
            COVERS_NOTIFY_TIMEOUT; default 30).
        lease_s: seconds from taking the lock until the due set may hand the notice
            to another process (default `lock_s` + 5, as `Settings.notice_lease`).
    """

    def __init__(self, client: redis.Redis, lock_s: float = 30.0,
                 lease_s: float | None = None) -> None:
        self.redis = client
        self.lock_s = lock_s
        self.lease_s = lock_s + LEASE_MARGIN_S if lease_s is None else lease_s
        self._begin = register(client, "begin_notice")
        self._unlock = register(client, "unlock")
        # Marks go only on a record that still exists: a notice in flight when its job
        # was forgotten (or expired) must not leave a stray half record behind.
        self._set_if_exists = register(client, "set_if_exists")

    def begin(self, job_id: str) -> NoticeLock | str:
        """Take a job's notice lock for `lock_s` seconds to deliver its notice.

        In the same step the notice's due-set entry is moved to `lease_s` from now, so
        no other process is handed it while this one tries.

        Returns:
            The lock with the ended record to deliver; ``"busy"`` if another process
            holds the lock; ``"nothing"`` if there is nothing to deliver (no job, not
            ended, delivered or given up; it is taken out of the due set).
        """
        token = secrets.token_hex(8)
        sent_at = time.monotonic()  # before Redis starts the TTL: `until` is early
        begun = self._begin(keys=[keys.notify_lock(job_id), keys.job(job_id), Due.NOTICES.key],
                            args=[int(self.lock_s * 1000), job_id, token,
                                  due_ms(self.lease_s)])
        if isinstance(begun, str):
            return begun
        job = from_flat(begun)
        if job is None:
            return "nothing"
        return NoticeLock(job, token, sent_at + self.lock_s)

    def taken_at_finish(self, job: Job) -> NoticeLock | None:
        """The lock the finish script took for the caller (`Job.notice_locked`), or None.

        `until` counts from the job's ``finished_at`` (the wall-clock stamp the ending
        step was given before it ran), so call this right after the job ended.
        """
        if not job.notice_locked or job.finished_at is None:
            return None
        left = job.finished_at + self.lock_s - time.time()
        return NoticeLock(job, FINISH_TOKEN, time.monotonic() + min(left, self.lock_s))

    def delivered(self, job_id: str, token: str) -> None:
        """Mark a notice delivered, out of the due set, its lock released (one round
        trip)."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        self._set_if_exists(keys=[keys.job(job_id)], client=pipe, args=_flat(
            encode_fields({"notified_at": now, "updated_at": now})))
        pipe.zrem(Due.NOTICES.key, job_id)
        self._unlock(keys=[keys.notify_lock(job_id)], args=[token], client=pipe)
        pipe.execute()

    def gave_up(self, job_id: str, reason: str) -> None:
        """Record why a notice was given up and take it out of the due set."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        self._set_if_exists(keys=[keys.job(job_id)], client=pipe, args=_flat(
            encode_fields({"notice_error": reason, "updated_at": now})))
        pipe.zrem(Due.NOTICES.key, job_id)
        pipe.execute()

    def unlock(self, job_id: str, token: str) -> None:
        """Release a notice's lock if `token` still holds it (after a try that did not
        deliver)."""
        self._unlock(keys=[keys.notify_lock(job_id)], args=[token])
