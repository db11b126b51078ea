"""A job's timeline: what happened to it, when, as a short capped list in Redis.

The operations console shows it on a job's page. Each entry is a small JSON object
``{"at": <unix ms>, "event": <name>, ...}``, appended where the job changes:

- ``enqueued``; ``submitted`` (``attempt``, ``cover_task_id``, ``existing``);
- ``attempt`` (a generate call that failed: ``n``, ``kind``, ``code``) and ``poll``
  (``n``, and ``kind``/``code`` when it failed);
- ``wait`` (``reason``, ``until`` in unix ms);
- ``succeeded`` (``images``, ``via``), ``failed`` (``kind``, ``code``, ``via``);
- ``retried`` (``round``, ``by``); ``notice`` (``status``: delivered, gave_up).

One write is one round trip (``add_timeline`` in ``store/lua/timeline.lua``: RPUSH,
LTRIM to the newest `HISTORY_CAP` entries, PEXPIRE), and a failing write is logged at
debug level and dropped, as metrics are: the timeline is for people and must never
break or slow a job. A script that changes a job can write its entry in its own step
(`History.script_args`): a new job's ``enqueued`` by its enqueue, a run's
``submitted``, ``poll``, ``wait`` and failed ``attempt`` by its exit (`Run.submitted`,
`Run.wait`). The list expires with the record: every write sets its lifetime to
the longer of the two record lifetimes (a live job has no expiry yet), and the
ending sets the ended record's; forgetting a job deletes it
(`kie_covers.store.failures.FailureIndex.forget`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from kie_covers.config import keys
from kie_covers.store.scripts import register

log = logging.getLogger("covers.history")

#: Most entries kept per job (the newest; a long poll loop drops its oldest polls).
HISTORY_CAP = 100
#: Longest text value kept in an entry (an error's message), in characters.
MAX_TEXT = 200

Event = dict[str, Any]


def event(name: str, at: float | None = None, **fields: Any) -> Event:
    """One entry: ``{"at": ms, "event": name, **fields}``; None values are left out
    and text is cut to `MAX_TEXT` characters.

    Args:
        at: unix seconds (default now).
    """
    out: Event = {"at": int((time.time() if at is None else at) * 1000), "event": name}
    for key, value in fields.items():
        if value is None:
            continue
        out[key] = value[:MAX_TEXT] if isinstance(value, str) else value
    return out


class History:
    """Appends to and reads jobs' timelines.

    Args:
        client: a `redis.Redis` with ``decode_responses=True``.
        ttl_s: seconds a timeline lives after its newest write unless the write says
            otherwise (the longer record lifetime).
        cap: most entries kept per job (default `HISTORY_CAP`).
    """

    def __init__(self, client: redis.Redis, ttl_s: float, cap: int = HISTORY_CAP) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.cap = cap
        self._add = register(client, "history_add")

    def add(self, job_id: str, *events: Event, ttl_s: float | None = None) -> None:
        """Append `events` to the job's timeline in one round trip; Redis errors are
        logged and dropped.

        Args:
            ttl_s: the timeline's lifetime from now, in seconds (default `ttl_s`);
                an ending passes its record's.
        """
        if not events:
            return
        try:
            self._add(keys=[keys.history(job_id)], args=self.script_args(*events, ttl_s=ttl_s))
        except redis.RedisError:
            log.debug("history of job %s not recorded", job_id, exc_info=True)

    def script_args(self, *events: Event, ttl_s: float | None = None) -> list[str | int]:
        """A timeline block of a script's ARGV (``store/lua/timeline.lua``) that appends
        `events` (none: nothing) to a timeline (its key is
        `kie_covers.config.keys.history`), for a script that writes them in its own
        step: their number, the cap, the lifetime in ms (`ttl_s` as in `add`), then each
        entry as compact JSON."""
        return [len(events), self.cap, int((self.ttl_s if ttl_s is None else ttl_s) * 1000),
                *(json.dumps(entry, separators=(",", ":")) for entry in events)]

    def read(self, job_id: str) -> list[Event]:
        """The job's timeline, oldest first (empty when none is kept)."""
        out: list[Event] = []
        for raw in self.redis.lrange(keys.history(job_id), 0, -1):
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def forget(self, job_id: str) -> None:
        """Delete the job's timeline."""
        self.redis.delete(keys.history(job_id))
