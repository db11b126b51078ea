"""Job records in Redis: the source of truth `get_cover` reads.

Each job is a hash (`config.keys.job`). State changes that must happen once
(enqueue per music task, submit, finish) are single Lua scripts, so two
workers, a worker and the callback endpoint, or a redelivered message can race
without doubling anything. Every non-final job also sits in the `config.keys.DUE`
sorted set with the time a worker should next look at it; that is how waits cost
no worker slot and how a job whose worker died is picked up again.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import redis

from kie_covers.config import keys
from kie_covers.core.errors import CoverError
from kie_covers.core.states import JobState

_ENQUEUE = """
-- KEYS[1] music key, KEYS[2] due
-- ARGV: job prefix, new job id, task id, callback url, now, due_ms, queue
local existing = redis.call('GET', KEYS[1])
if existing then
  local state = redis.call('HGET', ARGV[1] .. existing, 'state')
  if state and state ~= 'failed' then return {existing, 0} end
end
local job = ARGV[1] .. ARGV[2]
redis.call('HSET', job, 'job_id', ARGV[2], 'task_id', ARGV[3], 'callback_url', ARGV[4],
           'state', 'queued', 'created_at', ARGV[5], 'updated_at', ARGV[5],
           'attempts', 0, 'polls', 0, 'faults', 0, 'queue', ARGV[7])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2])
return {ARGV[2], 1}
"""

_BEGIN = """
-- The start of one task run, in one round trip: adopt a raw message's job if it has
-- no record, stop if the job has ended, take its run lock, renew its lease, read it.
-- KEYS 1 job, 2 music, 3 due, 4 lock
-- ARGV 1 job id, 2 task id, 3 url, 4 now, 5 lease due_ms, 6 queue, 7 token, 8 lock ms
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'task_id', ARGV[2], 'callback_url', ARGV[3],
             'state', 'queued', 'created_at', ARGV[4], 'updated_at', ARGV[4],
             'attempts', 0, 'polls', 0, 'faults', 0, 'queue', ARGV[6])
  redis.call('SET', KEYS[2], ARGV[1], 'NX')
end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' then
  return {'ended', redis.call('HGETALL', KEYS[1])}
end
if not redis.call('SET', KEYS[4], ARGV[7], 'NX', 'PX', ARGV[8]) then return {'busy', {}} end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return {'go', redis.call('HGETALL', KEYS[1])}
"""

_SUBMITTED = """
-- KEYS 1 job, 2 cover key, 3 due, 4 early-callback key, 5 lock
-- ARGV 1 job id, 2 cover id, 3 now, 4 due_ms, 5 lock token ('' keeps the lock)
-- Returns {changed, early callback or false}. Without an early callback
-- the run is over, so the lock is released here too.
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return {0, false} end
redis.call('HSET', KEYS[1], 'state', 'submitted', 'cover_task_id', ARGV[2],
           'submitted_at', ARGV[3], 'updated_at', ARGV[3], 'faults', 0, 'retries', 0,
           'wait_reason', '')
redis.call('HDEL', KEYS[1], 'hold_since')
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
local early = redis.call('GET', KEYS[4])
if early then
  redis.call('DEL', KEYS[4])
elseif ARGV[5] ~= '' and redis.call('GET', KEYS[5]) == ARGV[5] then
  redis.call('DEL', KEYS[5])
end
return {1, early}
"""

_RELEASE = """
-- The end of a run that leaves the job waiting: set fields, look again at due_ms,
-- release the run lock. A job that ended meanwhile (a callback) is left as it is.
-- KEYS 1 job, 2 due, 3 lock; ARGV 1 job id, 2 due_ms, 3 token, 4 now, 5.. field, value
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'succeeded' and state ~= 'failed' then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4], unpack(ARGV, 5))
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
return 0
"""

_FINISH = """
-- End a job once. Its id is ARGV[1]; or, for a callback (ARGV[1] empty), the owner of
-- the cover key ARGV[14]: if no job owns it yet, the callback body ARGV[16] is kept
-- under ARGV[15] for ARGV[17] s (the submit's record picks it up) and 'unknown' is
-- returned. One script, so a callback and the submit's record cannot pass each other.
-- KEYS 1 due, 2 failures, 3 kind index, 4 code index, 5 retry-due, 6 notify-due
-- ARGV 1 job id, 2 state, 3 images json, 4 error json, 5 now (s), 6 ttl s, 7 cover prefix,
--      8 retryable (1/0), 9 first retry delay ms, 10 longest retry delay ms,
--      11 music prefix, 12 notice lease ms (0: the app is not sent notices),
--      13 notice lock ms, 14-17 see above, 18 job prefix, 19 lock prefix,
--      20 notice lock prefix
-- Returns {the ended record, 1 if the notice lock was taken}, false if the job had
-- already ended (or is unknown), or 'unknown'.
local id = ARGV[1]
if id == '' then
  id = redis.call('GET', ARGV[14])
  if not id then
    redis.call('SET', ARGV[15], ARGV[16], 'EX', ARGV[17])
    return 'unknown'
  end
end
local job = ARGV[18] .. id
local state = redis.call('HGET', job, 'state')
if not state or state == 'succeeded' or state == 'failed' then return false end
redis.call('HSET', job, 'state', ARGV[2], 'images', ARGV[3], 'error', ARGV[4],
           'finished_at', ARGV[5], 'updated_at', ARGV[5], 'wait_reason', '')
redis.call('EXPIRE', job, ARGV[6])
redis.call('ZREM', KEYS[1], id)
redis.call('DEL', ARGV[19] .. id)
local music = ARGV[11] .. (redis.call('HGET', job, 'task_id') or '')
if redis.call('GET', music) == id then redis.call('EXPIRE', music, ARGV[6]) end
local cover = redis.call('HGET', job, 'cover_task_id')
if cover then redis.call('EXPIRE', ARGV[7] .. cover, ARGV[6]) end
if ARGV[2] == 'failed' then
  local now_ms = math.floor(tonumber(ARGV[5]) * 1000)
  redis.call('HSETNX', job, 'first_failed_at', ARGV[5])
  redis.call('HSET', job, 'last_failed_at', ARGV[5])
  redis.call('ZADD', KEYS[2], now_ms, id)
  redis.call('ZADD', KEYS[3], now_ms, id)
  redis.call('ZADD', KEYS[4], now_ms, id)
  if ARGV[8] == '1' then
    local rounds = tonumber(redis.call('HGET', job, 'retry_rounds') or '0')
    local delay = math.min(tonumber(ARGV[10]), tonumber(ARGV[9]) * (2 ^ math.min(rounds, 30)))
    redis.call('ZADD', KEYS[5], now_ms + delay, id)
  end
end
-- The app's notice is due from the moment the job ends, so no crash can lose it; the
-- process that ended the job takes the notice's lock here, delivers it at once and
-- takes it out of the due set again.
local lease = tonumber(ARGV[12])
local locked = 0
if lease > 0 and (redis.call('HGET', job, 'callback_url') or '') ~= '' then
  redis.call('ZADD', KEYS[6], math.floor(tonumber(ARGV[5]) * 1000) + lease, id)
  if redis.call('SET', ARGV[20] .. id, '1', 'NX', 'PX', ARGV[13]) then locked = 1 end
end
return {redis.call('HGETALL', job), locked}
"""

_CLAIM = """
-- One dispatcher round. Due entries of the job, notice and image-copy sets get a new
-- lease (they are not removed), so a dispatcher that dies after claiming loses nothing.
-- KEYS 1 due, 2 notify-due, 3 images-due; ARGV 1 now_ms, 2 lease_ms, 3 limit, 4 job prefix
-- Returns {jobs, notices, copies, earliest due_ms or -1}: jobs as flat
-- {id, task id, callback url, queue, ...}, notices and copies as {id, queue, ...};
-- an ended or vanished job is taken out of the due set instead.
local now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out = {{}, {}, {}}
for i = 1, 3 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', ARGV[4] .. id, 'state', 'task_id', 'callback_url', 'queue')
    if i == 1 and (not f[1] or f[1] == 'succeeded' or f[1] == 'failed') then
      redis.call('ZREM', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[i], now + lease, id)
      local row = out[i]
      row[#row + 1] = id
      if i == 1 then
        row[#row + 1] = f[2] or ''
        row[#row + 1] = f[3] or ''
      end
      row[#row + 1] = f[4] or ''
    end
  end
end
local earliest = -1
for i = 1, 3 do
  local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if first[2] and (earliest < 0 or tonumber(first[2]) < earliest) then
    earliest = tonumber(first[2])
  end
end
out[4] = earliest
return out
"""

_BEGIN_NOTICE = """
-- KEYS 1 notice lock, 2 job, 3 notify-due; ARGV 1 lock ms, 2 job id
-- Returns the record when this caller is to deliver; 'busy' if another is on it;
-- 'nothing' if there is nothing to deliver (no job, not ended, delivered, given up).
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 'busy' end
local f = redis.call('HMGET', KEYS[2], 'state', 'notified_at', 'notice_error')
if (f[1] ~= 'succeeded' and f[1] ~= 'failed') or (f[2] or '') ~= '' or (f[3] or '') ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('DEL', KEYS[1])
  return 'nothing'
end
return redis.call('HGETALL', KEYS[2])
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _now() -> float:
    return time.time()


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    """One job's record, decoded from its hash."""

    job_id: str
    task_id: str
    callback_url: str
    state: JobState
    queue: str = ""
    cover_task_id: str | None = None
    images: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    attempts: int = 0
    polls: int = 0
    faults: int = 0
    retries: int = 0
    wait_reason: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    submitted_at: float | None = None
    finished_at: float | None = None
    hold_since: float | None = None
    first_failed_at: float | None = None
    last_failed_at: float | None = None
    retry_rounds: int = 0
    notified_at: float | None = None
    #: Copies kept in COVERS_IMAGE_STORE, in image order (written by `tasks.images`).
    stored_images: list[dict[str, Any]] = field(default_factory=list)
    #: Why copying to the image store gave up or refused images; None if it did not.
    images_error: str | None = None
    raw: dict[str, str] = field(default_factory=dict, repr=False)
    #: Not stored: True on the record `JobStore.finish` returns when it took the
    #: notice's lock for the caller.
    notice_locked: bool = field(default=False, repr=False)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Job:
        """Decode a job hash as stored by `JobStore`."""

        def num(name: str) -> float | None:
            value = raw.get(name)
            return float(value) if value else None

        return cls(
            job_id=raw["job_id"],
            task_id=raw.get("task_id", ""),
            callback_url=raw.get("callback_url", ""),
            state=JobState(raw.get("state", "queued")),
            queue=raw.get("queue", ""),
            cover_task_id=raw.get("cover_task_id") or None,
            images=json.loads(raw["images"]) if raw.get("images") else [],
            error=json.loads(raw["error"]) if raw.get("error") else None,
            attempts=int(raw.get("attempts") or 0),
            polls=int(raw.get("polls") or 0),
            faults=int(raw.get("faults") or 0),
            retries=int(raw.get("retries") or 0),
            wait_reason=raw.get("wait_reason") or None,
            created_at=num("created_at"),
            updated_at=num("updated_at"),
            submitted_at=num("submitted_at"),
            finished_at=num("finished_at"),
            hold_since=num("hold_since"),
            first_failed_at=num("first_failed_at"),
            last_failed_at=num("last_failed_at"),
            retry_rounds=int(raw.get("retry_rounds") or 0),
            notified_at=num("notified_at"),
            stored_images=json.loads(raw["stored_images"]) if raw.get("stored_images") else [],
            images_error=raw.get("images_error") or None,
            raw=raw,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready view `get_cover` returns; times are ISO 8601 UTC."""
        return {
            "job_id": self.job_id,
            "task_id": self.task_id,
            "callback_url": self.callback_url,
            "state": self.state.value,
            "cover_task_id": self.cover_task_id,
            "images": list(self.images),
            "error": self.error,
            "attempts": self.attempts,
            "polls": self.polls,
            "waiting_for": self.wait_reason,
            "created_at": _iso(self.raw.get("created_at")),
            "updated_at": _iso(self.raw.get("updated_at")),
            "submitted_at": _iso(self.raw.get("submitted_at")),
            "finished_at": _iso(self.raw.get("finished_at")),
            "first_failed_at": _iso(self.raw.get("first_failed_at")),
            "last_failed_at": _iso(self.raw.get("last_failed_at")),
            "retry_rounds": self.retry_rounds,
            "notified_at": _iso(self.raw.get("notified_at")),
            "notice_error": self.raw.get("notice_error") or None,
            "stored_images": [dict(entry) for entry in self.stored_images],
            "images_error": self.images_error,
        }


def _job_from_flat(flat: Any) -> Job | None:
    """A job from a script's HGETALL reply (a flat name, value list), or None."""
    if not flat:
        return None
    raw = dict(zip(flat[::2], flat[1::2], strict=True))
    return Job.from_hash(raw) if raw.get("job_id") else None


@dataclass(frozen=True)
class Begun:
    """How a task run started (`JobStore.begin`)."""

    #: ``go`` (locked: do a step), ``ended`` (the job has ended) or ``busy`` (locked
    #: by another run).
    status: str
    #: The record (None when busy).
    job: Job | None
    #: The run lock's token when ``go``.
    token: str | None


class Submitted(NamedTuple):
    """What `JobStore.mark_submitted` did."""

    #: False when the job was no longer queued.
    changed: bool
    #: A callback that came before the submit was recorded (JSON), or None.
    early: str | None


class DueJob(NamedTuple):
    """A job whose message is due again (`JobStore.claim`)."""

    job_id: str
    task_id: str
    callback_url: str
    queue: str


@dataclass(frozen=True)
class Claimed:
    """One dispatcher round's claims (`JobStore.claim`)."""

    jobs: list[DueJob]
    #: (job id, queue) of notices due.
    notices: list[tuple[str, str]]
    #: (job id, queue) of image copies due.
    copies: list[tuple[str, str]]
    #: Seconds until the earliest entry of the three sets is due, None if all are empty.
    next_due_in_s: float | None


class JobStore:
    """Reads and changes job records.

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        result_ttl_s: seconds a succeeded job is kept.
        failure_ttl_s: seconds a failed job is kept.
        retry_base_s: seconds from a retryable failure to its first scheduled retry;
            doubles with each round (default 300).
        retry_max_delay_s: the longest wait between scheduled retries (default 21600).
        notice_lease_s: seconds from a job's end until its app notice is sent again
            from the due set if the process that ended it has not delivered it;
            0 (the default) when the app is not sent notices.
        notice_lock_s: seconds the notice lock taken at a job's end is held
            (default 30).
    """

    def __init__(self, client: redis.Redis, result_ttl_s: float, failure_ttl_s: float,
                 retry_base_s: float = 300.0, retry_max_delay_s: float = 21600.0,
                 notice_lease_s: float = 0.0, notice_lock_s: float = 30.0) -> None:
        self.redis = client
        self.notice_lease_s = notice_lease_s
        self.notice_lock_s = notice_lock_s
        self.result_ttl_s = int(result_ttl_s)
        self.failure_ttl_s = int(failure_ttl_s)
        self.retry_base_s = retry_base_s
        self.retry_max_delay_s = retry_max_delay_s
        self._enqueue = client.register_script(_ENQUEUE)
        self._begin = client.register_script(_BEGIN)
        self._submitted = client.register_script(_SUBMITTED)
        self._release = client.register_script(_RELEASE)
        self._finish = client.register_script(_FINISH)
        self._claim = client.register_script(_CLAIM)
        self._begin_notice = client.register_script(_BEGIN_NOTICE)
        self._unlock = client.register_script(_UNLOCK)

    # --- creation -----------------------------------------------------------------

    def enqueue(self, job_id: str, task_id: str, callback_url: str,
                lease_s: float, queue: str) -> tuple[str, bool]:
        """Record a new job unless one for `task_id` is queued, submitted or succeeded.

        The job is put in the due set `lease_s` seconds ahead, so that it is sent
        again if its first message is lost; `queue` is where its messages go.

        Returns:
            (job id, created): the existing job's id and False, or `job_id` and True.
        """
        now = _now()
        result = self._enqueue(
            keys=[keys.music(task_id), keys.DUE],
            args=[keys.job(""), job_id, task_id, callback_url, repr(now),
                  int((now + lease_s) * 1000), queue],
        )
        return str(result[0]), bool(int(result[1]))

    def begin(self, job_id: str, task_id: str, callback_url: str, lease_s: float,
              queue: str) -> Begun:
        """Start a task run of a job, in one round trip.

        Creates the record of a job that arrived as a raw message (none exists yet),
        then, unless the job has ended, takes its run lock and renews its lease in the
        due set, both for `lease_s` seconds.
        """
        now = _now()
        token = secrets.token_hex(8)
        status, flat = self._begin(
            keys=[keys.job(job_id), keys.music(task_id), keys.DUE, keys.lock(job_id)],
            args=[job_id, task_id, callback_url, repr(now), int((now + lease_s) * 1000),
                  queue, token, int(lease_s * 1000)],
        )
        return Begun(str(status), _job_from_flat(flat), token if status == "go" else None)

    # --- reading ------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job, or None if unknown or expired."""
        raw: dict[str, str] = self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return Job.from_hash(raw) if raw.get("job_id") else None

    # --- changes ------------------------------------------------------------------

    def update(self, job_id: str, **values: Any) -> None:
        """Set plain fields (attempt counters, wait reasons) on a job."""
        mapping: dict[str, str | int | float] = {
            k: ("" if v is None else v) for k, v in values.items()
        }
        mapping["updated_at"] = repr(_now())
        self.redis.hset(keys.job(job_id), mapping=cast(Any, mapping))

    def count(self, job_id: str, name: str) -> int:
        """Add one to counter `name` (attempts, polls, faults); returns the new value."""
        return int(self.redis.hincrby(keys.job(job_id), name, 1))

    def mark_submitted(self, job_id: str, cover_task_id: str, next_look_s: float,
                       token: str = "") -> Submitted:
        """Record Kie's cover task id; next look in `next_look_s` seconds.

        Args:
            token: the run lock's token; the lock is released unless an early
                callback came (the run goes on to end the job with it).
        """
        now = _now()
        changed, early = self._submitted(
            keys=[keys.job(job_id), keys.cover(cover_task_id), keys.DUE,
                  keys.early_callback(cover_task_id), keys.lock(job_id)],
            args=[job_id, cover_task_id, repr(now), int((now + next_look_s) * 1000), token],
        )
        return Submitted(bool(changed), str(early) if early else None)

    def release(self, job_id: str, token: str, delay_s: float, **values: Any) -> None:
        """End a run that leaves the job waiting, in one round trip.

        Sets `values` (None clears a field), has a worker look again in `delay_s`
        seconds and releases the run lock held with `token`. A job that ended
        meanwhile is left as it is.
        """
        now = _now()
        pairs: list[str | int | float] = []
        for name, value in values.items():
            pairs += [name, "" if value is None else value]
        self._release(
            keys=[keys.job(job_id), keys.DUE, keys.lock(job_id)],
            args=[job_id, int((now + delay_s) * 1000), token, repr(now), *pairs],
        )

    def finish(self, job_id: str, images: list[str] | None = None,
               error: CoverError | None = None) -> Job | None:
        """End a job once: succeeded with `images`, or failed with `error`.

        When app notices are on (`notice_lease_s`), the job's notice is put in
        `config.keys.NOTIFY_DUE` in the same step, and its lock taken for the caller
        (`Job.notice_locked`), who is to deliver it.

        Returns:
            The ended record if this call ended it; None if it had already ended
            (or is unknown).
        """
        ended = self._run_finish(job_id, images, error)
        return ended if isinstance(ended, Job) else None

    def finish_by_cover(self, cover_task_id: str, body: str, early_ttl_s: float,
                        images: list[str] | None = None, error: CoverError | None = None
                        ) -> Job | str | None:
        """End the job that owns a Kie cover task id, as a callback says (`finish`).

        If no job owns it yet (its submit's answer is not recorded yet), the callback
        `body` is kept for `early_ttl_s` seconds for that submit (`mark_submitted`) in
        the same step, so the two cannot pass each other by.

        Returns:
            The ended record; None if the job had already ended; ``"unknown"`` if no
            job owns the cover task id (the body was kept).
        """
        return self._run_finish("", images, error, cover_task_id, body, early_ttl_s)

    def _run_finish(self, job_id: str, images: list[str] | None, error: CoverError | None,
                    cover_task_id: str = "", body: str = "", early_ttl_s: float = 0.0
                    ) -> Job | str | None:
        state = JobState.FAILED if error is not None else JobState.SUCCEEDED
        ttl = self.failure_ttl_s if error is not None else self.result_ttl_s
        kind = error.kind if error is not None else ""
        code = error.code if error is not None else None
        ended = self._finish(
            keys=[keys.DUE, keys.FAILURES, keys.failures_by_kind(kind),
                  keys.failures_by_code(code), keys.RETRY_DUE, keys.NOTIFY_DUE],
            args=[job_id, state.value, json.dumps(images or []),
                  json.dumps(error.to_dict()) if error is not None else "",
                  repr(_now()), ttl, keys.cover(""),
                  "1" if error is not None and error.retryable else "0",
                  int(self.retry_base_s * 1000), int(self.retry_max_delay_s * 1000),
                  keys.music(""), int(self.notice_lease_s * 1000),
                  int(self.notice_lock_s * 1000),
                  keys.cover(cover_task_id), keys.early_callback(cover_task_id), body,
                  max(1, int(early_ttl_s)), keys.job(""), keys.lock(""),
                  keys.notify_lock("")],
        )
        if ended == "unknown":
            return "unknown"
        if not ended:
            return None
        job = _job_from_flat(ended[0])
        if job is not None:
            job.notice_locked = bool(ended[1])
        return job

    def claim(self, lease_s: float, limit: int = 100) -> Claimed:
        """What is due now in the job, notice and image-copy due sets, in one round trip.

        Each claimed entry gets a new lease of `lease_s` seconds; at most `limit` per
        set. Ended jobs found in the due set are taken out of it.
        """
        now_ms = int(_now() * 1000)
        jobs, notices, copies, earliest = self._claim(
            keys=[keys.DUE, keys.NOTIFY_DUE, keys.IMAGES_DUE],
            args=[now_ms, int(lease_s * 1000), limit, keys.job("")])
        return Claimed(
            jobs=[DueJob(*jobs[i:i + 4]) for i in range(0, len(jobs), 4)],
            notices=[(notices[i], notices[i + 1]) for i in range(0, len(notices), 2)],
            copies=[(copies[i], copies[i + 1]) for i in range(0, len(copies), 2)],
            next_due_in_s=None if int(earliest) < 0 else int(earliest) / 1000.0 - _now(),
        )

    def record_rejected(self, job_id: str, error: CoverError) -> bool:
        """Keep a failed record for a raw message that failed validation.

        Its music task id and URL are not trusted, so no music mapping is made.

        Returns:
            True if this call recorded the failure (False if the job was known).
        """
        now = repr(_now())
        key = keys.job(job_id)
        created = self.redis.hsetnx(key, "job_id", job_id)
        if not created:
            return False
        self.redis.hset(key, mapping={
            "task_id": "", "callback_url": "", "state": JobState.QUEUED.value,
            "created_at": now, "updated_at": now, "attempts": 0, "polls": 0,
        })
        return self.finish(job_id, error=error) is not None

    # --- the app's notice (`tasks.notify`) ---------------------------------------------

    def begin_notice(self, job_id: str) -> Job | str:
        """Take a job's notice lock for `notice_lock_s` seconds to deliver its notice.

        Returns:
            The ended record to deliver; ``"busy"`` if another process holds the lock;
            ``"nothing"`` if there is nothing to deliver (no job, not ended, delivered
            or given up; it is taken out of the due set).
        """
        begun = self._begin_notice(
            keys=[keys.notify_lock(job_id), keys.job(job_id), keys.NOTIFY_DUE],
            args=[int(self.notice_lock_s * 1000), job_id])
        if isinstance(begun, str):
            return begun
        return _job_from_flat(begun) or "nothing"

    def notice_delivered(self, job_id: str) -> None:
        """Mark a job's notice delivered, out of the due set, its lock released (one
        round trip)."""
        now = repr(_now())
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), mapping={"notified_at": now, "updated_at": now})
        pipe.zrem(keys.NOTIFY_DUE, job_id)
        pipe.delete(keys.notify_lock(job_id))
        pipe.execute()

    # --- per-job run lock (taken by `begin`) ----------------------------------------

    def unlock(self, job_id: str, token: str) -> None:
        """Release the lock if this token still holds it."""
        self._unlock(keys=[keys.lock(job_id)], args=[token])
