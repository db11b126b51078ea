"""A full Redis is a pause: wait until it takes writes again, saying why once per wait.

With ``maxmemory`` reached under ``noeviction`` (the policy the README requires),
Redis refuses every command that could grow its memory with ``OOM command not
allowed when used memory > 'maxmemory'`` (redis-py's ``OutOfMemoryError``), and takes
them again once memory is freed. Workers wait that out instead of failing the step
at hand or exiting: `wait_while_full` retries an operation Redis refused for being
full, backing off from `FIRST_WAIT_S` to `LONGEST_WAIT_S` seconds and logging one
warning per wait that names the cause. `WaitWhenFull` does the same for every
command of a redis-py client (worker processes build theirs with it; see
`kie_covers.runtime.connections.pause_when_full`).

Trying again is safe: Redis refuses a command whole; a Lua script is refused at its
first write, before it has written anything; a MULTI/EXEC transaction is refused
whole. A pipeline without a transaction may have had its non-growing commands
(DEL, ZREM, ...) applied: those are idempotent where this project uses them.

Producers do not wait: `kie_covers.services.producer.enqueue_cover` raises
`kie_covers.core.errors.StoreFull` at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery.worker import state as worker_state
from redis.retry import Retry

log = logging.getLogger("covers.full_redis")

T = TypeVar("T")

#: Seconds of the first wait after Redis refused a write for being full.
FIRST_WAIT_S = 0.5
#: Longest wait between two tries, seconds (each wait doubles up to this).
LONGEST_WAIT_S = 2.0


def is_redis_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from (kombu wraps Redis errors), is
    Redis refusing a write because it reached ``maxmemory``."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, redis.exceptions.OutOfMemoryError):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def _stopping() -> bool:
    """Whether this worker was told to stop (then waiting would hold its exit up)."""
    return bool(worker_state.should_stop or worker_state.should_terminate)


def wait_while_full(operation: Callable[[], T], what: str) -> T:
    """`operation()`, tried again for as long as Redis refuses it for being full.

    Args:
        operation: what to do (it must be safe to try again after a refusal).
        what: what it is, for the log line (e.g. "acknowledging a message").

    Raises:
        whatever `operation` raises that is not a full Redis; the full-Redis error
        itself only once the worker is told to stop.
    """
    wait, started = FIRST_WAIT_S, time.monotonic()
    while True:
        try:
            return operation()
        except Exception as error:
            if not is_redis_full(error) or _stopping():
                raise
            log.warning("Redis is full (maxmemory reached: %s); %s waits %.1fs, then "
                        "tries again (paused %.0fs so far)", error, what, wait,
                        time.monotonic() - started)
            time.sleep(wait)
            wait = min(LONGEST_WAIT_S, wait * 2)


class WaitWhenFull(Retry):
    """redis-py `Retry` that, besides retrying connection errors as configured, waits
    out a full Redis (`wait_while_full`) for every command of the client."""

    def call_with_retry(self, do: Callable[[], T], fail: Any,
                        is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> T:
        """See `redis.retry.Retry.call_with_retry`; a full Redis is waited out."""
        parent = super().call_with_retry
        return wait_while_full(
            lambda: parent(do, fail, is_retryable, with_failure_count), "a Redis write")
