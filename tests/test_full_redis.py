"""Waiting out a full Redis: which errors count, the wait, the dispatcher's unsent messages
(fast, no Redis)."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import redis
from kombu.exceptions import OperationalError

from kie_covers.runtime import full_redis
from kie_covers.runtime.app import app
from kie_covers.worker.dispatcher import DueDispatcher

OOM = "command not allowed when used memory > 'maxmemory'."


def kombu_wrapped_oom() -> OperationalError:
    """A full Redis as kombu reports it: its own error, raised from redis-py's."""
    try:
        try:
            raise redis.exceptions.OutOfMemoryError(OOM)
        except redis.exceptions.OutOfMemoryError as oom:
            raise OperationalError(str(oom)) from oom
    except OperationalError as wrapped:
        return wrapped


def test_a_full_redis_is_recognised_directly_and_through_kombu() -> None:
    assert full_redis.is_redis_full(redis.exceptions.OutOfMemoryError(OOM))
    assert full_redis.is_redis_full(kombu_wrapped_oom())
    assert not full_redis.is_redis_full(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not full_redis.is_redis_full(redis.exceptions.ConnectionError("refused"))
    assert not full_redis.is_redis_full(None)


def test_a_refused_write_is_tried_again_with_one_warning_per_wait(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(full_redis, "FIRST_WAIT_S", 0.01)
    refusals = [redis.exceptions.OutOfMemoryError(OOM), kombu_wrapped_oom()]
    calls: list[int] = []

    def write() -> str:
        calls.append(1)
        if refusals:
            raise refusals.pop(0)
        return "written"

    with caplog.at_level(logging.WARNING, logger="covers.full_redis"):
        assert full_redis.wait_while_full(write, "a test write") == "written"
    assert len(calls) == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert all("Redis is full" in w and "maxmemory" in w and "a test write" in w
               for w in warnings)


def test_other_errors_are_not_waited_out() -> None:
    calls: list[int] = []

    def write() -> None:
        calls.append(1)
        raise redis.exceptions.ResponseError("WRONGTYPE Operation against a key")

    with pytest.raises(redis.exceptions.ResponseError):
        full_redis.wait_while_full(write, "a test write")
    assert calls == [1]


def test_the_dispatcher_keeps_claimed_messages_a_full_redis_refused() -> None:
    dispatcher = DueDispatcher(app, interval_s=1.0, lease_s=60.0)
    sent: list[str] = []
    refusals: list[Exception] = [kombu_wrapped_oom()]

    def send(name: str) -> None:
        if refusals:
            raise refusals.pop(0)
        sent.append(name)

    dispatcher._unsent.extend([partial(send, "a"), partial(send, "b")])
    with pytest.raises(OperationalError):
        dispatcher._send_unsent()
    assert len(dispatcher._unsent) == 2 and sent == []  # kept, in order
    assert dispatcher._send_unsent() == 2 and sent == ["a", "b"]

    # Any other refusal drops that one message (its lease brings the job back), so it
    # cannot hold up the others
    refusals.append(ValueError("cannot encode"))
    dispatcher._unsent.extend([partial(send, "c"), partial(send, "d")])
    with pytest.raises(ValueError):
        dispatcher._send_unsent()
    assert dispatcher._send_unsent() == 1 and sent == ["a", "b", "d"]
