"""Narrow guards around kombu's Redis transport, so that no broker fault stops a worker.

`install` (idempotent; `kie_covers.runtime.app` calls it) patches three things of
``kombu.transport.redis`` (kombu pinned ``>=5.7,<5.8`` in pyproject; a fast test,
tests/test_kombu_guard.py, fails if the patched names or signatures move):

1. ``Channel._connparams``: when the broker connection is lost while a message is
   unacknowledged, kombu 5.x closes the old channel and tries to put that message back
   through a transport whose connection is already gone; building the Redis
   parameters then fails with ``AttributeError: 'NoneType' object has no attribute
   'hostname'``, which Celery treats as unrecoverable. Raised as a Redis connection
   error instead, kombu ignores it as it ignores every error of a dead connection, and
   the worker reconnects. The message stays in kombu's unacked set, and its job in
   our due set, which sends it again.

2. Poison entries. kombu turns each queue entry into an envelope with the module's
   ``loads`` (in ``Channel._brpop_read``, the worker's consume path, and
   ``Channel._get``) and hands it to ``Transport._deliver``, which builds the
   message. Text that is no JSON, or JSON that is no usable envelope (see
   `kie_covers.runtime.poison.envelope_problem`), used to raise there, and Celery
   stopped the worker (``Unrecoverable error: JSONDecodeError``). Guarded, the entry
   (already popped off its queue) is moved to the quarantine instead and the worker
   takes the next one. Entries that are valid JSON are quarantined re-encoded as
   JSON (the same content); text that is no JSON is kept as received (bytes that
   are not UTF-8 arrive with U+FFFD in their place: kombu decodes them so).

3. A full Redis (``OutOfMemoryError``: maxmemory reached under noeviction) is a
   connection-like error of the transport, so Celery's consumer reconnects (and
   `kie_covers.worker.quarantine_consumer` backs off) instead of exiting, and
   recording a received message as unacked, acknowledging or rejecting one waits
   until Redis has room again (`kie_covers.runtime.full_redis.wait_while_full`), so
   no received message and no ack is lost. These are MULTI/EXEC transactions that
   Redis refuses whole, so trying again is safe.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from kie_covers.core.errors import UndecodableEntry
from kie_covers.runtime.full_redis import wait_while_full
from kie_covers.runtime.poison import NOT_JSON, envelope_problem, quarantine

_MARK = "_covers_guarded"
#: The kombu functions this module replaces, as (owner, attribute name).
PATCHED = (("Channel", "_connparams"), ("Channel", "_brpop_read"), ("Channel", "_get"),
           ("Transport", "_deliver"), ("QoS", "append"), ("QoS", "ack"),
           ("QoS", "reject"), ("module", "loads"))


def install() -> None:
    """Install every guard of the module docstring (idempotent)."""
    channel: Any = kombu_redis.Channel
    if getattr(channel._connparams, _MARK, False):
        return
    _guard_connparams(channel)
    _guard_entries(channel, kombu_redis.Transport)
    _guard_full_redis(kombu_redis.Transport, kombu_redis.QoS)


def _mark(function: Callable[..., Any]) -> Callable[..., Any]:
    setattr(function, _MARK, True)
    return function


def _guard_connparams(channel: Any) -> None:
    original = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        transport = getattr(self, "connection", None)
        if transport is None or getattr(transport, "client", None) is None:
            raise redis.exceptions.ConnectionError("broker connection already closed")
        return original(self, asynchronous)

    channel._connparams = _mark(_connparams)


def _entry_queue(channel: Any) -> str:
    """The queue an entry `_brpop_read` just popped came from: kombu moves it to the end
    of its round-robin cycle before decoding it."""
    items = getattr(getattr(channel, "_queue_cycle", None), "items", None)
    return str(items[-1]) if items else ""


def _guard_entries(channel: Any, transport: Any) -> None:
    module: Any = kombu_redis
    original_loads = module.loads

    def loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original_loads(text, *args, **kwargs)
        except ValueError as bad:  # JSONDecodeError, and UnicodeDecodeError of bytes
            raise UndecodableEntry(text if isinstance(text, str) else repr(text),
                                   str(bad)) from bad

    original_read, original_get = channel._brpop_read, channel._get
    original_deliver = transport._deliver

    @functools.wraps(original_read)
    def _brpop_read(self: Any, **options: Any) -> Any:
        try:
            return original_read(self, **options)
        except UndecodableEntry as poison:
            quarantine(poison.text, NOT_JSON, _entry_queue(self), poison.detail)
            raise Empty() from None

    @functools.wraps(original_get)
    def _get(self: Any, queue: str) -> Any:
        while True:  # like kombu: Empty when no usable entry is left
            try:
                message = original_get(self, queue)
            except UndecodableEntry as poison:
                quarantine(poison.text, NOT_JSON, queue, poison.detail)
                continue
            problem = envelope_problem(message)
            if problem is None:
                return message
            quarantine(json.dumps(message), problem[0], queue, problem[1])

    @functools.wraps(original_deliver)
    def _deliver(self: Any, message: Any, queue: str) -> Any:
        problem = envelope_problem(message)
        if problem is not None:
            quarantine(json.dumps(message), problem[0], queue or "", problem[1])
            return None
        return original_deliver(self, message, queue)

    module.loads = _mark(loads)
    channel._brpop_read = _mark(_brpop_read)
    channel._get = _mark(_get)
    transport._deliver = _mark(_deliver)


def _guard_full_redis(transport: Any, qos: Any) -> None:
    oom = redis.exceptions.OutOfMemoryError
    if oom not in transport.connection_errors:
        transport.connection_errors = (*transport.connection_errors, oom)
    original_append, original_ack, original_reject = qos.append, qos.ack, qos.reject

    @functools.wraps(original_append)
    def append(self: Any, message: Any, delivery_tag: Any) -> Any:
        return wait_while_full(lambda: original_append(self, message, delivery_tag),
                               "recording a received message as unacked")

    @functools.wraps(original_ack)
    def ack(self: Any, delivery_tag: Any) -> Any:
        return wait_while_full(lambda: original_ack(self, delivery_tag),
                               "acknowledging a message")

    @functools.wraps(original_reject)
    def reject(self: Any, delivery_tag: Any, requeue: bool = False) -> Any:
        return wait_while_full(lambda: original_reject(self, delivery_tag, requeue),
                               "rejecting a message")

    qos.append = _mark(append)
    qos.ack = _mark(ack)
    qos.reject = _mark(reject)
