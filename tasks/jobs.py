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
from typing import Any, cast

import redis

from config import keys
from tasks.errors import CoverError
from tasks.states import JobState

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

_ADOPT = """
-- A raw message for a job id we have no record of: create the record.
-- KEYS[1] job key, KEYS[2] music key, KEYS[3] due
-- ARGV job id, task id, url, now, due_ms, queue
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'task_id', ARGV[2], 'callback_url', ARGV[3],
           'state', 'queued', 'created_at', ARGV[4], 'updated_at', ARGV[4],
           'attempts', 0, 'polls', 0, 'faults', 0, 'queue', ARGV[6])
redis.call('SET', KEYS[2], ARGV[1], 'NX')
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
"""

_SUBMITTED = """
-- KEYS[1] job, KEYS[2] cover key, KEYS[3] due, KEYS[4] early-callback key
-- ARGV job id, cover id, now, due_ms
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return {0, false} end
redis.call('HSET', KEYS[1], 'state', 'submitted', 'cover_task_id', ARGV[2],
           'submitted_at', ARGV[3], 'updated_at', ARGV[3], 'faults', 0, 'retries', 0,
           'wait_reason', '')
redis.call('HDEL', KEYS[1], 'hold_since')
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
local early = redis.call('GET', KEYS[4])
if early then redis.call('DEL', KEYS[4]) end
return {1, early}
"""

_FINISH = """
-- KEYS 1 job, 2 due, 3 lock, 4 failures, 5 kind index, 6 code index, 7 retry-due
-- ARGV 1 job id, 2 state, 3 images json, 4 error json, 5 now (s), 6 ttl s, 7 cover prefix,
--      8 retryable (1/0), 9 first retry delay ms, 10 longest retry delay ms,
--      11 music prefix (the music key is read from the record, saving a round trip)
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'images', ARGV[3], 'error', ARGV[4],
           'finished_at', ARGV[5], 'updated_at', ARGV[5], 'wait_reason', '')
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
local music = ARGV[11] .. (redis.call('HGET', KEYS[1], 'task_id') or '')
if redis.call('GET', music) == ARGV[1] then redis.call('EXPIRE', music, ARGV[6]) end
local cover = redis.call('HGET', KEYS[1], 'cover_task_id')
if cover then redis.call('EXPIRE', ARGV[7] .. cover, ARGV[6]) end
if ARGV[2] == 'failed' then
  local now_ms = math.floor(tonumber(ARGV[5]) * 1000)
  redis.call('HSETNX', KEYS[1], 'first_failed_at', ARGV[5])
  redis.call('HSET', KEYS[1], 'last_failed_at', ARGV[5])
  redis.call('ZADD', KEYS[4], now_ms, ARGV[1])
  redis.call('ZADD', KEYS[5], now_ms, ARGV[1])
  redis.call('ZADD', KEYS[6], now_ms, ARGV[1])
  if ARGV[8] == '1' then
    local rounds = tonumber(redis.call('HGET', KEYS[1], 'retry_rounds') or '0')
    local delay = math.min(tonumber(ARGV[10]), tonumber(ARGV[9]) * (2 ^ math.min(rounds, 30)))
    redis.call('ZADD', KEYS[7], now_ms + delay, ARGV[1])
  end
end
return 1
"""

_CLAIM_DUE = """
-- KEYS[1] due; ARGV now_ms, lease_ms, limit. Due jobs get a new lease (not removed),
-- so a dispatcher that dies after claiming loses nothing.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[2], id)
end
return ids
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


class JobStore:
    """Reads and changes job records.

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        result_ttl_s: seconds a succeeded job is kept.
        failure_ttl_s: seconds a failed job is kept.
        retry_base_s: seconds from a retryable failure to its first scheduled retry;
            doubles with each round (default 300).
        retry_max_delay_s: the longest wait between scheduled retries (default 21600).
    """

    def __init__(self, client: redis.Redis, result_ttl_s: float, failure_ttl_s: float,
                 retry_base_s: float = 300.0, retry_max_delay_s: float = 21600.0) -> None:
        self.redis = client
        self.result_ttl_s = int(result_ttl_s)
        self.failure_ttl_s = int(failure_ttl_s)
        self.retry_base_s = retry_base_s
        self.retry_max_delay_s = retry_max_delay_s
        self._enqueue = client.register_script(_ENQUEUE)
        self._adopt = client.register_script(_ADOPT)
        self._submitted = client.register_script(_SUBMITTED)
        self._finish = client.register_script(_FINISH)
        self._claim = client.register_script(_CLAIM_DUE)
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

    def adopt(self, job_id: str, task_id: str, callback_url: str, lease_s: float,
              queue: str) -> bool:
        """Create the record of a job that arrived as a raw message; False if it exists."""
        now = _now()
        return bool(self._adopt(
            keys=[keys.job(job_id), keys.music(task_id), keys.DUE],
            args=[job_id, task_id, callback_url, repr(now), int((now + lease_s) * 1000),
                  queue],
        ))

    # --- reading ------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job, or None if unknown or expired."""
        raw: dict[str, str] = self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return Job.from_hash(raw) if raw.get("job_id") else None

    def job_for_cover(self, cover_task_id: str) -> str | None:
        """The job id that owns a Kie cover task id."""
        value = self.redis.get(keys.cover(cover_task_id))
        return str(value) if value else None

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

    def mark_submitted(self, job_id: str, cover_task_id: str,
                       next_look_s: float) -> tuple[bool, str | None]:
        """Record Kie's cover task id; next look in `next_look_s` seconds.

        Returns:
            (changed, early callback JSON or None): changed is False when the job was
            no longer queued; the early callback is one that arrived before this.
        """
        now = _now()
        changed, early = self._submitted(
            keys=[keys.job(job_id), keys.cover(cover_task_id), keys.DUE,
                  keys.early_callback(cover_task_id)],
            args=[job_id, cover_task_id, repr(now), int((now + next_look_s) * 1000)],
        )
        return bool(changed), (str(early) if early else None)

    def finish(self, job_id: str, images: list[str] | None = None,
               error: CoverError | None = None) -> bool:
        """End a job once: succeeded with `images`, or failed with `error`.

        Returns:
            True if this call ended it; False if it had already ended (or is unknown).
        """
        state = JobState.FAILED if error is not None else JobState.SUCCEEDED
        ttl = self.failure_ttl_s if error is not None else self.result_ttl_s
        kind = error.kind if error is not None else ""
        code = error.code if error is not None else None
        return bool(self._finish(
            keys=[keys.job(job_id), keys.DUE, keys.lock(job_id),
                  keys.FAILURES, keys.failures_by_kind(kind), keys.failures_by_code(code),
                  keys.RETRY_DUE],
            args=[job_id, state.value, json.dumps(images or []),
                  json.dumps(error.to_dict()) if error is not None else "",
                  repr(_now()), ttl, keys.cover(""),
                  "1" if error is not None and error.retryable else "0",
                  int(self.retry_base_s * 1000), int(self.retry_max_delay_s * 1000),
                  keys.music("")],
        ))

    def schedule(self, job_id: str, delay_s: float) -> None:
        """Have a worker look at the job again in `delay_s` seconds."""
        self.redis.zadd(keys.DUE, {job_id: int((_now() + delay_s) * 1000)})

    def next_due_in_s(self) -> float | None:
        """Seconds until the earliest due job (negative if overdue), or None if none."""
        first = self.redis.zrange(keys.DUE, 0, 0, withscores=True)
        if not first:
            return None
        return float(first[0][1]) / 1000.0 - _now()

    def forget_due(self, job_id: str) -> None:
        """Take a job out of the due set (it ended, or its record is gone)."""
        self.redis.zrem(keys.DUE, job_id)

    def claim_due(self, lease_s: float, limit: int = 100, due_set: str = keys.DUE
                  ) -> list[str]:
        """Job ids whose time has come in `due_set`; each gets a new lease of `lease_s` s."""
        now_ms = int(_now() * 1000)
        ids = self._claim(keys=[due_set], args=[now_ms, int(lease_s * 1000), limit])
        return [str(i) for i in ids]

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
        return self.finish(job_id, error=error)

    def save_early_callback(self, cover_task_id: str, body: str, ttl_s: float) -> None:
        """Keep a callback whose cover task id no job owns yet (maybe not recorded yet)."""
        self.redis.set(keys.early_callback(cover_task_id), body, ex=max(1, int(ttl_s)))

    # --- per-job run lock -------------------------------------------------------------

    def lock(self, job_id: str, ttl_s: float) -> str | None:
        """Take the job's run lock for `ttl_s` seconds; returns a token, or None if held."""
        token = secrets.token_hex(8)
        got = self.redis.set(keys.lock(job_id), token, nx=True, px=int(ttl_s * 1000))
        return token if got else None

    def unlock(self, job_id: str, token: str) -> None:
        """Release the lock if this token still holds it."""
        self._unlock(keys=[keys.lock(job_id)], args=[token])
