"""The job store: the one door to job records in Redis.

Nothing else reads or writes a job's keys (`kie_covers.config.keys.job`,
``music``, ``cover``, ``lock``, ``early``): callers get typed `Job` records
(`kie_covers.store.record`) and say what happened. State changes that must
happen once (enqueue per music task, a run's start, submit, end) are single Lua
scripts (`kie_covers.store.scripts`). A task run holds its job through a `Run`
(`begin`), whose only exits are submitted, wait and finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from kie_covers.config import keys
from kie_covers.core.errors import CoverError
from kie_covers.core.states import JobState
from kie_covers.store import counters
from kie_covers.store.due import Due, DueSets, due_ms
from kie_covers.store.failures import FailureIndex
from kie_covers.store.fair import Admission, sends_now
from kie_covers.store.history import Event, History
from kie_covers.store.liveness import lock_token
from kie_covers.store.locks import TokenLock
from kie_covers.store.notices import Notices
from kie_covers.store.record import Job, encode_fields, from_flat
from kie_covers.store.record import flat as _flat
from kie_covers.store.run import Busy, Ended, Run, RunScripts
from kie_covers.store.scripts import register

#: Jobs read per pipelined round trip by `JobStore.fetch_many`.
FETCH_CHUNK = 500
#: Bytes of early callbacks kept in all, by default (COVERS_EARLY_CALLBACK_BYTES's default).
EARLY_CAP_BYTES = 1_000_000
#: What `JobStore.finish_by_cover` answers when it ends no job: no job owns the cover
#: (body kept), the cover is not the named job's, the early-callback cap is reached.
FINISH_REFUSALS = ("unknown", "mismatch", "full")


class Counter(StrEnum):
    """Counters on a job's record that grow by one (`JobStore.count`)."""

    ATTEMPTS = "attempts"  #: generate calls (counted by the limiter as it lets one go)
    POLLS = "polls"  #: record-info calls (likewise)
    NOTICE_ATTEMPTS = "notice_attempts"  #: failed deliveries of the app's notice
    IMAGES_ATTEMPTS = "images_attempts"  #: copy runs that hit a retryable fault


@dataclass(frozen=True)
class Lifetimes:
    """How long records live, and when a failure is retried on schedule.

    Attributes:
        result_ttl_s: seconds a succeeded job is kept (COVERS_RESULT_TTL).
        failure_ttl_s: seconds a failed job is kept (COVERS_FAILURE_TTL).
        retry_base_s: seconds from a retryable failure to its first scheduled retry;
            doubles with each round (COVERS_RETRY_BASE, default 300).
        retry_max_delay_s: the longest wait between scheduled retries (default 21600).
        notice_lease_s: seconds from a job's end until its app notice is sent again
            from the due set if the process that ended it has not delivered it;
            0 (the default) when the app is not sent notices.
        notice_lock_s: seconds the notice lock taken at a job's end is held
            (default 30).
    """

    result_ttl_s: float
    failure_ttl_s: float
    retry_base_s: float = 300.0
    retry_max_delay_s: float = 21600.0
    notice_lease_s: float = 0.0
    notice_lock_s: float = 30.0


class JobStore:
    """Reads and changes job records.

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        lifetimes: record lifetimes and notice timings.
    """

    def __init__(self, client: redis.Redis, lifetimes: Lifetimes) -> None:
        self.redis = client
        self.lifetimes = lifetimes
        self.due = DueSets(client)
        self.failures = FailureIndex(client, lifetimes.failure_ttl_s)
        self.notices = Notices(client, lifetimes.notice_lock_s)
        #: Jobs' timelines; a live job's lives as long as the longer record lifetime.
        self.history = History(client, max(lifetimes.result_ttl_s, lifetimes.failure_ttl_s))
        self._enqueue = register(client, "enqueue")
        self._enqueue_admit = register(client, "enqueue_admit")
        self._begin = register(client, "begin")
        self._finish = register(client, "finish")
        self._set_if_exists = register(client, "set_if_exists")
        self._count = register(client, "count")
        #: The scripts of a `Run`'s exits.
        self.run_scripts = RunScripts(client, self.history)

    # --- creation -----------------------------------------------------------------

    def enqueue(self, job_id: str, music_task_id: str, callback_url: str,
                lease_s: float, queue: str, priority: str = "interactive",
                tenant: str | None = None) -> tuple[str, bool]:
        """Record a new job unless one for `music_task_id` is queued, submitted or
        succeeded.

        A failed job it replaces leaves the failure index (its record stays until it
        expires): a music task has at most one failure row, its newest job's.

        The job is put in the due set `lease_s` seconds ahead, so that it is sent
        again if its first message is lost; `queue` is where its messages go;
        `priority` (default ``interactive``) and `tenant` (default None, the default
        tenant) say where it waits its turn under the rate limit.

        Returns:
            (job id, created): the existing job's id and False, or `job_id` and True.
        """
        job_keys, args = self._new_job(job_id, music_task_id, callback_url, lease_s, queue,
                                       priority, tenant)
        result = self._enqueue(keys=job_keys, args=args)
        existing = str(result[0])
        # The job found is this very `job_id` only when this call is a retry of one
        # whose answer was lost (a connection cut after Redis ran it): it was created.
        return existing, bool(int(result[1])) or existing == job_id

    def enqueue_and_admit(self, job_id: str, music_task_id: str, callback_url: str,
                          lease_s: float, queue: str, priority: str, tenant: str | None,
                          *, admission: Admission, timeline: Event) -> tuple[str, bool]:
        """`enqueue`, and for a new job its first timeline entry `timeline` and its place
        in the fair generate order (`admission`, from
        `kie_covers.store.fair.FairLimiter.admission`): all in one Redis step.

        Returns:
            (job id, send now): the existing job's id and False (nothing changed), or
            `job_id` and whether its message is to be sent now (its turn has come, or
            no worker has asked yet); False means it waits in Redis for a grant. A
            retry of this call whose answer was lost answers as the first did.
        """
        job_keys, args = self._new_job(job_id, music_task_id, callback_url, lease_s, queue,
                                       priority, tenant)
        found, answer = self._enqueue_admit(
            keys=[*admission.keys, keys.history(job_id), *job_keys],
            args=[*admission.args, *self.history.script_args(timeline), *args])
        return str(found), sends_now(str(answer))

    def _new_job(self, job_id: str, music_task_id: str, callback_url: str, lease_s: float,
                 queue: str, priority: str, tenant: str | None
                 ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of ``new_job`` (``store/lua/new_job.lua``) for a new record."""
        now = time.time()
        record = Job.new(job_id, music_task_id, callback_url, queue, now, priority, tenant)
        return ([keys.music(music_task_id), Due.JOBS.key, keys.FAILURES, keys.RETRY_DUE],
                [keys.job(""), job_id, due_ms(lease_s, now), keys.failures_by_kind(""),
                 keys.failures_by_code(""), keys.state_index(""), int(now * 1000),
                 *_flat(record.to_hash())])

    def begin(self, job_id: str, music_task_id: str, callback_url: str, lease_s: float,
              queue: str, priority: str = "interactive", tenant: str | None = None,
              holder: str | None = None, reserved_by: str | None = None
              ) -> Run | Ended | Busy:
        """Start a task run of a job, in one round trip.

        Creates the record of a job that arrived as a raw message (none exists yet,
        with the message's `priority` and `tenant`; a known job keeps its own), then,
        unless the job has ended, takes its run lock and renews its lease in the
        due set, both for `lease_s` seconds.

        `holder` is the worker process running it (`kie_covers.store.liveness`): the
        job is tied to it until the run ends, and its lock token names it, so if the
        process dies the job is handed back at once instead of after `lease_s`.
        `reserved_by` is the process that reserved the message (a worker's main
        process; used only with `holder`): whatever `begin` finds, the message has left
        its hands.

        Returns:
            A `Run` holding the job (use it as a context manager); `Ended` with the
            record if the job has ended; `Busy` if another run holds it.
        """
        now = time.time()
        token = lock_token(holder)
        job_keys = [keys.job(job_id), keys.music(music_task_id), Due.JOBS.key,
                    keys.lock(job_id)]
        if holder is not None:
            job_keys.append(keys.held(holder))
            if reserved_by is not None:
                job_keys.append(keys.held(reserved_by))
        args: list[str | int] = [job_id, due_ms(lease_s, now), token, int(lease_s * 1000),
                                 keys.state_index(""), int(now * 1000)]
        status, flat = self._begin(keys=job_keys, args=args)
        if status == "new":  # a raw message: no record yet, so make one in the same step
            record = Job.new(job_id, music_task_id, callback_url, queue, now, priority,
                             tenant)
            status, flat = self._begin(keys=job_keys, args=[*args, *_flat(record.to_hash())])
        job = from_flat(flat)
        if status == "busy" or job is None:
            return Busy(job_id)
        if status == "ended":
            return Ended(job)
        return Run(self.run_scripts, self.finish, job, token,
                   None if holder is None else keys.held(holder))

    def record_rejected(self, job_id: str, error: CoverError) -> Job | None:
        """Keep a failed record for a raw message that failed validation.

        Its music task id and URL are not trusted, so no music mapping is made.

        Returns:
            The ended record if this call recorded the failure; None if the job was
            known.
        """
        key = keys.job(job_id)
        if not self.redis.hsetnx(key, "job_id", job_id):
            return None
        record = Job.new(job_id, "", "", "", time.time())
        self.redis.hset(key, items=_flat(record.to_hash()))
        return self.finish(job_id, error=error)

    # --- reading ------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job, or None if unknown or expired."""
        raw: dict[str, str] = self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return Job.from_hash(raw) if raw.get("job_id") else None

    def fetch_many(self, job_ids: Sequence[str], fields: Sequence[str] | None = None
                   ) -> list[Job | None]:
        """The records of many jobs, pipelined (one round trip per `FETCH_CHUNK`).

        Args:
            fields: read only these fields (others take their defaults), e.g.
                ``("state", "wait_reason")`` to count states cheaply; None reads all.

        Returns:
            One entry per id, in order: the record, or None for an unknown job.
        """
        out: list[Job | None] = []
        wanted = ["job_id", *fields] if fields else None
        for start in range(0, len(job_ids), FETCH_CHUNK):
            chunk = job_ids[start:start + FETCH_CHUNK]
            # transaction=False: a MULTI would block Redis for the whole chunk and buys
            # nothing here.
            pipe = self.redis.pipeline(transaction=False)
            for job_id in chunk:
                if wanted is None:
                    pipe.hgetall(keys.job(job_id))
                else:
                    pipe.hmget(keys.job(job_id), wanted)
            for reply in pipe.execute():
                raw = reply if wanted is None else {
                    name: value for name, value in zip(wanted, reply, strict=True)
                    if value is not None}
                out.append(Job.from_hash(raw) if raw.get("job_id") else None)
        return out

    def owner_of(self, music_task_id: str) -> str | None:
        """The id of the job currently responsible for a music task, if any."""
        owner = self.redis.get(keys.music(music_task_id))
        return str(owner) if owner else None

    def copy_lock(self, job_id: str, ttl_s: float) -> TokenLock:
        """The lock one run holds while it copies a job's images (not yet taken)."""
        return TokenLock(self.redis, keys.images_lock(job_id), ttl_s)

    # --- changes ------------------------------------------------------------------

    def update(self, job_id: str, **values: Any) -> bool:
        """Set fields of a job that still exists (and ``updated_at``); None clears one.

        Never recreates an expired or forgotten record.

        Returns:
            False when the job no longer exists.
        """
        fields = encode_fields({**values, "updated_at": time.time()})
        return bool(self._set_if_exists(keys=[keys.job(job_id)], args=_flat(fields)))

    def count(self, job_id: str, counter: Counter) -> int | None:
        """Add one to a counter of the job; returns the new value, or None when the
        record no longer exists (expired or forgotten: it is never recreated)."""
        value = int(self._count(keys=[keys.job(job_id)], args=[counter.value]))
        return None if value < 0 else value

    def counter_key(self, job_id: str, counter: Counter) -> tuple[str, str]:
        """(hash key, field) of a job's counter, for a script that counts in its own
        step (the limiter counts the attempt or poll it lets go)."""
        return keys.job(job_id), counter.value

    def finish(self, job_id: str, images: list[str] | None = None,
               error: CoverError | None = None) -> Job | None:
        """End a job once: succeeded with `images`, or failed with `error`.

        When app notices are on (`Lifetimes.notice_lease_s`), the job's notice is put
        in `Due.NOTICES` in the same step, and its lock taken for the caller
        (`Job.notice_locked`), who is to deliver it.

        Returns:
            The ended record if this call ended it; None if it had already ended
            (or is unknown).
        """
        ended = self._run_finish(job_id, images, error)
        return ended if isinstance(ended, Job) else None

    def finish_by_cover(self, cover_task_id: str, body: str, early_ttl_s: float,
                        images: list[str] | None = None, error: CoverError | None = None,
                        *, job_id: str = "", early_cap_bytes: int = EARLY_CAP_BYTES
                        ) -> Job | str | None:
        """End the job that owns a Kie cover task id, as a callback says (`finish`).

        If no job owns it yet (its submit's answer is not recorded yet), the callback
        `body` is kept for `early_ttl_s` seconds for that submit (`Run.submitted`) in
        the same step, so the two cannot pass each other by. All bodies kept that way
        and not yet expired hold at most `early_cap_bytes` bytes together (default
        1,000,000, as COVERS_EARLY_CALLBACK_BYTES); a body that would go over is not
        kept.

        Args:
            job_id: the job the callback's URL names ("" for any). The cover must be
                that job's: owned by it, or, when no job owns the cover yet, the job
                must exist and be waiting for its submit's answer (queued); otherwise
                nothing changes.

        Returns:
            The ended record; None if the job had already ended; ``"unknown"`` if no
            job owns the cover task id (the body was kept); ``"mismatch"`` if the cover
            is not `job_id`'s; ``"full"`` if the body would have been kept but the cap
            is reached (nothing kept).
        """
        return self._run_finish("", images, error, cover_task_id, body, early_ttl_s,
                                job_id, early_cap_bytes)

    def _run_finish(self, job_id: str, images: list[str] | None, error: CoverError | None,
                    cover_task_id: str = "", body: str = "", early_ttl_s: float = 0.0,
                    expected_job_id: str = "", early_cap_bytes: int = 0
                    ) -> Job | str | None:
        life = self.lifetimes
        state = JobState.FAILED if error is not None else JobState.SUCCEEDED
        ttl = life.failure_ttl_s if error is not None else life.result_ttl_s
        kind = error.kind if error is not None else ""
        code = error.code if error is not None else None
        ended = self._finish(
            keys=[Due.JOBS.key, keys.FAILURES, keys.failures_by_kind(kind),
                  keys.failures_by_code(code), keys.RETRY_DUE, Due.NOTICES.key,
                  keys.EARLY_BYTES, keys.EARLY_EXPIRY, keys.EARLY_SIZES,
                  keys.METRIC_COUNTERS, keys.metric_histogram(counters.JOB_DURATION)],
            args=[job_id, state.value, json.dumps(images or []),
                  json.dumps(error.to_dict()) if error is not None else "",
                  repr(time.time()), int(ttl), keys.cover(""),
                  "1" if error is not None and error.retryable else "0",
                  int(life.retry_base_s * 1000), int(life.retry_max_delay_s * 1000),
                  keys.music(""), int(life.notice_lease_s * 1000),
                  int(life.notice_lock_s * 1000),
                  keys.cover(cover_task_id), keys.early_callback(cover_task_id), body,
                  max(1, int(early_ttl_s)), keys.job(""), keys.lock(""),
                  keys.notify_lock(""), expected_job_id, cover_task_id, early_cap_bytes,
                  keys.failures_by_kind(""), keys.failures_by_code(""),
                  keys.state_index(""), keys.waiting(""),
                  counters.ended_field(state.value, kind), counters.DURATION_BOUNDS_ARG],
        )
        if ended in FINISH_REFUSALS:
            return str(ended)
        if not ended:
            return None
        job = from_flat(ended[0])
        if job is not None:
            job.notice_locked = bool(ended[1])
        return job
