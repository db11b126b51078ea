"""The due sets: when a worker should next look at a job, a notice or an image copy.

Three Redis sorted sets, scored by the unix time (ms) an entry is due. Every
non-final job sits in `Due.JOBS` (its next poll, the end of a retry wait, or
the end of the lease of a run in progress: a run that dies is picked up again
from here). Ended jobs whose app notice is not delivered yet sit in
`Due.NOTICES`; succeeded jobs whose images are not copied yet in `Due.COPIES`.
Every worker's dispatcher claims what is due (`DueSets.claim`) and sends its
message again. This class is the one rescheduler: everything that puts an
entry back for later, or takes it out, goes through it (or through a job
script that does the same in one step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import redis

from kie_covers.config import keys
from kie_covers.store.scripts import register


class Due(Enum):
    """The three due sets, by what their entries are waiting to do."""

    JOBS = keys.DUE  #: a job's next run (a step)
    NOTICES = keys.NOTIFY_DUE  #: an ended job's notice to the app
    COPIES = keys.IMAGES_DUE  #: a succeeded job's copy to the image store

    @property
    def key(self) -> str:
        """The sorted set's Redis key."""
        return str(self.value)


class DueJob(NamedTuple):
    """A job whose message is due again (`DueSets.claim`)."""

    job_id: str
    music_task_id: str
    callback_url: str
    queue: str


@dataclass(frozen=True)
class Claimed:
    """One dispatcher round's claims (`DueSets.claim`)."""

    jobs: list[DueJob]
    #: (job id, queue) of notices due.
    notices: list[tuple[str, str]]
    #: (job id, queue) of image copies due.
    copies: list[tuple[str, str]]
    #: Seconds until the earliest entry of the three sets is due, None if all are empty.
    next_due_in_s: float | None

    @property
    def count(self) -> int:
        """Entries claimed in all."""
        return len(self.jobs) + len(self.notices) + len(self.copies)

    @property
    def largest(self) -> int:
        """Entries claimed from the fullest set (a full batch means: claim again)."""
        return max(len(self.jobs), len(self.notices), len(self.copies))


def due_ms(delay_s: float, now: float | None = None) -> int:
    """The score of an entry due `delay_s` seconds from `now` (default: the clock)."""
    return int(((time.time() if now is None else now) + delay_s) * 1000)


class DueSets:
    """Puts entries in the due sets, takes them out, and claims what is due.

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim = register(client, "claim")

    def later(self, which: Due, job_id: str, delay_s: float) -> None:
        """Have a worker look at `job_id` in set `which` in `delay_s` seconds."""
        self.redis.zadd(which.key, {job_id: due_ms(delay_s)})

    def leave(self, which: Due, job_id: str) -> None:
        """Take `job_id` out of set `which` (nothing more to do there)."""
        self.redis.zrem(which.key, job_id)

    def depth(self, which: Due) -> int:
        """Entries in set `which`."""
        return int(self.redis.zcard(which.key))

    def claim(self, lease_s: float, limit: int = 100) -> Claimed:
        """What is due now in the three sets, in one round trip.

        Each claimed entry gets a new lease of `lease_s` seconds; at most `limit` per
        set. Ended jobs found in the job set are taken out of it.
        """
        now = time.time()
        jobs, notices, copies, earliest = self._claim(
            keys=[Due.JOBS.key, Due.NOTICES.key, Due.COPIES.key],
            args=[int(now * 1000), int(lease_s * 1000), limit, keys.job("")])
        return Claimed(
            jobs=[DueJob(*jobs[i:i + 4]) for i in range(0, len(jobs), 4)],
            notices=[(notices[i], notices[i + 1]) for i in range(0, len(notices), 2)],
            copies=[(copies[i], copies[i + 1]) for i in range(0, len(copies), 2)],
            next_due_in_s=None if int(earliest) < 0 else int(earliest) / 1000.0 - time.time(),
        )
