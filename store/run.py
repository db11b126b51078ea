"""A task run's hold on its job: the run lock, and the only three ways to let go of it.

`JobStore.begin` returns a `Run` when it took the job's run lock. A run ends in
exactly one of:

- `Run.submitted`: Kie accepted the generate; the cover task id is recorded and
  the job looks again after the poll interval;
- `Run.wait`: the job goes back to the due set for some seconds (a poll, a
  limiter slot, a retry wait), with the fields to change;
- `Run.finish`: the job ends, succeeded or failed, once.

Used as a context manager, a run that leaves by an exception without taking an
exit releases the lock at once, so the next run need not wait for its TTL (the
job's lease in the due set still brings it back); and on leaving, the job is untied
from the worker process that ran it (`kie_covers.store.liveness`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import redis
from redis.commands.core import Script

from kie_covers.config import keys
from kie_covers.core.errors import CoverError
from kie_covers.store.due import Due, due_ms
from kie_covers.store.history import Event, History
from kie_covers.store.record import Job, encode_fields, flat
from kie_covers.store.scripts import register

#: `JobStore.finish`: (job id, images, error) -> the ended record, or None.
Finisher = Callable[[str, list[str] | None, CoverError | None], Job | None]


@dataclass(frozen=True)
class Ended:
    """`JobStore.begin` found the job ended: nothing to do but report its outcome."""

    job: Job


@dataclass(frozen=True)
class Busy:
    """`JobStore.begin` found another run holding the job (or no record at all)."""

    job_id: str


class SubmitRecorded(NamedTuple):
    """What `Run.submitted` did."""

    #: False when the job was no longer queued (another run or a callback was first).
    changed: bool
    #: A callback that came before the submit was recorded (its JSON body), or None.
    #: When there is one, the run still holds the lock and goes on to end the job.
    early_callback: str | None


class RunScripts:
    """The scripts a run's exits use, registered once per store (not per run), and the
    store's timelines, which the exits write in their own step."""

    def __init__(self, client: redis.Redis, history: History) -> None:
        self.redis = client
        self.history = history
        self.submitted: Script = register(client, "submitted")
        self.release: Script = register(client, "release")
        self.unlock: Script = register(client, "unlock")


class Run:
    """One task run's hold on `job` (see the module docstring).

    Args:
        scripts: the store's scripts for a run's exits.
        finish: the store's `JobStore.finish`.
        job: the record as the run began.
        token: the run lock's token.
        held_key: the held set of the worker process running it
            (`kie_covers.store.liveness`), left when the run ends (by the exit's own
            script where it can, so a run costs no extra round trip); None if untied.
    """

    def __init__(self, scripts: RunScripts, finish: Finisher, job: Job, token: str,
                 held_key: str | None = None) -> None:
        self.job = job
        self.token = token
        self.held_key = held_key
        #: False once an exit (or `abandon`) has let go of the lock.
        self.open = True
        self._scripts = scripts
        self._finish = finish

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.open:
            self.abandon()
        if self.held_key is not None:  # over without an exit that untied it (finish, …)
            self._scripts.redis.srem(self.held_key, self.job.job_id)
            self.held_key = None

    def submitted(self, cover_task_id: str, next_look_s: float,
                  timeline: Sequence[Event] = ()) -> SubmitRecorded:
        """Record Kie's cover task id; look again in `next_look_s` seconds; add
        `timeline` to the job's timeline if it was recorded (all in one round trip).

        Releases the lock unless an early callback came (the run goes on to end the
        job with it, `finish`) or the job was no longer queued (nothing recorded: the
        run still holds the lock and takes another exit).
        """
        now = time.time()
        job_id = self.job.job_id
        changed, early = self._scripts.submitted(
            keys=[keys.job(job_id), keys.cover(cover_task_id), Due.JOBS.key,
                  keys.early_callback(cover_task_id), keys.lock(job_id),
                  keys.history(job_id), *self._held()],
            args=[job_id, cover_task_id, repr(now), due_ms(next_look_s, now), self.token,
                  keys.state_index(""), keys.waiting(""),
                  *self._scripts.history.script_args(*timeline)])
        early_body = str(early) if early else None
        if changed and early_body is None:
            self.open = False  # the script released the lock with the record
            self.held_key = None  # and untied the job
        return SubmitRecorded(bool(changed), early_body)

    def wait(self, delay_s: float, *, timeline: Sequence[Event] = (), **changes: Any) -> None:
        """Back to the due set for `delay_s` seconds, with `changes` to the record
        (None clears a field); releases the lock and adds `timeline` to the job's
        timeline, in one round trip. A job that ended meanwhile (a callback) is left as
        it is (its timeline still gets the entries)."""
        now = time.time()
        fields = encode_fields({**changes, "updated_at": now})
        job_id = self.job.job_id
        self._scripts.release(keys=[keys.job(job_id), Due.JOBS.key, keys.lock(job_id),
                                    keys.history(job_id), *self._held()],
                              args=[job_id, due_ms(delay_s, now), self.token,
                                    keys.waiting(""), int(now * 1000),
                                    *self._scripts.history.script_args(*timeline),
                                    *flat(fields)])
        self.open = False
        self.held_key = None  # the script untied the job

    def finish(self, images: list[str] | None = None,
               error: CoverError | None = None) -> Job | None:
        """End the job: succeeded with `images`, or failed with `error` (see
        `JobStore.finish`). Returns the ended record, or None if it had already ended."""
        self.open = False
        return self._finish(self.job.job_id, images, error)

    def _held(self) -> list[str]:
        """The held-set key for an exit script to untie the job with, if any."""
        return [] if self.held_key is None else [self.held_key]

    def abandon(self) -> None:
        """Let go of the lock without changing the job (its lease brings it back)."""
        self.open = False
        self._scripts.unlock(keys=[keys.lock(self.job.job_id)], args=[self.token])
