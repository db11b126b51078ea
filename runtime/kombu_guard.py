"""A guard around a kombu Redis transport fault that kills workers after a Redis restart.

When the broker connection is lost while a message is unacknowledged, kombu 5.x
closes the old channel and tries to put that message back through a transport
whose connection is already gone; building the Redis parameters then fails with
``AttributeError: 'NoneType' object has no attribute 'hostname'``, which Celery
treats as unrecoverable and the worker exits. Raised as a Redis connection error
instead, kombu ignores it as it ignores every error of a dead connection, and the
worker reconnects. The message is not lost: it stays in kombu's unacked set, and
its job stays in our due set, which sends it again (COVERS_REDISPATCH_AFTER).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_MARK = "_covers_guarded"


def install() -> None:
    """Guard ``kombu.transport.redis.Channel._connparams`` (idempotent)."""
    channel: Any = kombu_redis.Channel
    if getattr(channel._connparams, _MARK, False):
        return
    original = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        transport = getattr(self, "connection", None)
        if transport is None or getattr(transport, "client", None) is None:
            raise redis.exceptions.ConnectionError("broker connection already closed")
        return original(self, asynchronous)

    setattr(_connparams, _MARK, True)
    channel._connparams = _connparams
