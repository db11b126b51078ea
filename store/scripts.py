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
         "unlock", "set_if_exists", "retry_failed", "acquire", "pause", "count",
         "fair_acquire", "fair_grant", "fair_wake")
#: Script -> the shared text run in front of it (Redis scripts cannot call each other).
PRELUDES = {"fair_acquire": "fair_lib", "fair_grant": "fair_lib"}


def _read(name: str) -> str:
    return (resources.files("kie_covers.store") / "lua" / f"{name}.lua").read_text()


@functools.cache
def source(name: str) -> str:
    """The text of script `name`, its prelude (`PRELUDES`) in front (read from the
    package once per process)."""
    if name not in NAMES:
        raise KeyError(f"no Lua script {name!r}")
    prelude = PRELUDES.get(name)
    return (_read(prelude) + "\n" if prelude else "") + _read(name)


def register(client: redis.Redis, name: str) -> Script:
    """Script `name`, registered with `client` (no round trip until it first runs)."""
    return client.register_script(source(name))
