"""The Lua scripts of the store, read once from ``store/lua/*.lua``.

Each state change that must happen once (enqueue per music task, a run's start,
submit, end, claim, retry) is one script, so two workers, a worker and the
callback endpoint, or a redelivered message can race without doubling anything.
Scripts are registered per client (redis-py then runs them by SHA, loading them
again after a Redis restart).
"""

from __future__ import annotations

import functools
from importlib import resources

import redis
from redis.commands.core import Script

#: Every script, by file name (without ``.lua``).
NAMES = ("enqueue", "begin", "submitted", "release", "finish", "claim", "begin_notice",
         "unlock", "set_if_exists", "retry_failed", "acquire", "pause", "count", "index_jobs",
         "show_wait", "beat", "reap", "leave", "give_back", "fair_acquire",
         "fair_grant", "fair_wake", "enqueue_admit", "history_add")

#: Shared Lua functions (``lua/<name>.lua``) put before the scripts that call them.
#: ``failure_rows``: a music task keeps at most one failure row (``unindex_failure``).
#: ``indexes``: the overview's state and wait indexes (``index_state``, ``index_wait``).
#: ``hand_back``: a worker process's held jobs go back to the due set.
#: ``fair_lib``: the fair generate limiter's queues, ring and grants (`store.fair`);
#: ``fair_admit``: a new job takes its place in them (``admit``; after ``fair_lib``).
#: ``new_job``: a new job's record, once per music task (after ``failure_rows`` and
#: ``indexes``). ``timeline``: appends to a job's timeline (`store.history`).
INCLUDES: dict[str, tuple[str, ...]] = {
    "enqueue": ("failure_rows", "indexes", "new_job"),
    "enqueue_admit": ("failure_rows", "indexes", "new_job", "timeline", "fair_lib",
                      "fair_admit"),
    "history_add": ("timeline",), "finish": ("failure_rows", "indexes"),
    "retry_failed": ("failure_rows", "indexes"), "begin": ("indexes",),
    "submitted": ("indexes", "timeline"), "release": ("indexes", "timeline"),
    "reap": ("hand_back",), "leave": ("hand_back",), "give_back": ("hand_back",),
    "fair_acquire": ("fair_lib", "fair_admit"), "fair_grant": ("fair_lib",),
}


@functools.cache
def source(name: str) -> str:
    """The text of script `name`, its `INCLUDES` first (read once per process)."""
    if name not in NAMES:
        raise KeyError(f"no Lua script {name!r}")
    return "".join(_read(part) for part in (*INCLUDES.get(name, ()), name))


def _read(name: str) -> str:
    return (resources.files("kie_covers.store") / "lua" / f"{name}.lua").read_text()


def register(client: redis.Redis, name: str) -> Script:
    """Script `name`, registered with `client` (no round trip until it first runs)."""
    return client.register_script(source(name))
