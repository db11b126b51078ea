"""The guard that keeps workers alive through kombu's close-after-lost-connection fault."""

from __future__ import annotations

import base64
import inspect
import json
import uuid
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis

from kie_covers.config import keys
from kie_covers.runtime import kombu_guard
from kie_covers.runtime.poison import envelope_problem
from kie_covers.runtime.redis_server import RedisServer


def test_a_closed_transport_raises_a_connection_error_kombu_ignores(
    redis_server: RedisServer,
) -> None:
    kombu_guard.install()
    kombu_guard.install()  # idempotent
    # kombu's Connection is unannotated; its Redis channel's internals are read as Any.
    with Connection(redis_server.url) as connection:  # type: ignore[no-untyped-call]
        channel: Any = connection.default_channel
        # While connected, the parameters are built as before
        assert channel._connparams()["port"] == connection.port
        # Once kombu has let go of the transport's client (as when a lost connection is
        # closed), asking for a pool is a connection error, which kombu ignores while
        # closing, not an AttributeError that stops the worker
        transport = channel.connection
        client, transport.client = transport.client, None
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                channel._connparams()
            assert isinstance(redis.exceptions.ConnectionError(), connection.connection_errors)
        finally:
            transport.client = client


#: The kombu internals the guard replaces, with the signatures it was written against
#: (kombu 5.7, pinned in pyproject): a kombu that moves or changes one fails here.
PATCHED_SIGNATURES = {
    ("Channel", "_connparams"): "(self, asynchronous=False)",
    ("Channel", "_brpop_read"): "(self, **options)",
    ("Channel", "_get"): "(self, queue)",
    ("Transport", "_deliver"): "(self, message, queue)",
    ("QoS", "append"): "(self, message, delivery_tag)",
    ("QoS", "ack"): "(self, delivery_tag)",
    ("QoS", "reject"): "(self, delivery_tag, requeue=False)",
}


def test_the_patched_kombu_functions_are_where_and_what_the_guard_expects() -> None:
    kombu_guard.install()
    assert set(kombu_guard.PATCHED) == {*PATCHED_SIGNATURES, ("module", "loads")}
    for (owner, name), signature in PATCHED_SIGNATURES.items():
        patched = getattr(getattr(kombu_redis, owner), name)
        assert getattr(patched, "_covers_guarded", False), (owner, name)
        # functools.wraps keeps the original reachable: its signature is kombu's own
        original = getattr(patched, "__wrapped__", None)
        if original is not None:
            assert str(inspect.signature(original)) == signature, (owner, name)
    module: Any = kombu_redis
    assert module.loads._covers_guarded
    # _brpop_read hands the popped entry's text to the module's loads, then the
    # envelope to the transport's _deliver: the two places the guard relies on
    read_source = inspect.getsource(inspect.unwrap(kombu_redis.Channel._brpop_read))
    assert "self.connection._deliver(loads(bytes_to_str(item)), dest)" in read_source
    assert "self._queue_cycle.rotate(dest)" in read_source
    assert redis.exceptions.OutOfMemoryError in kombu_redis.Transport.connection_errors


@pytest.mark.parametrize(("entry", "reason"), [
    ([1, 2], "not_an_envelope"),
    ({"hello": 1}, "not_an_envelope"),
    ({"properties": {}}, "not_an_envelope"),
    ({"properties": {"delivery_tag": "t", "delivery_info": "x"}}, "not_an_envelope"),
    ({"body": "!!!notbase64***", "properties": {"delivery_tag": "t",
                                                "body_encoding": "base64"}},
     "bad_body_encoding"),
    ({"body": "eA==", "properties": {"delivery_tag": "t", "body_encoding": "rot13"}},
     "bad_body_encoding"),
])
def test_envelope_problems_are_named(entry: object, reason: str) -> None:
    problem = envelope_problem(entry)
    assert problem is not None and problem[0] == reason


def test_a_usable_envelope_has_no_problem() -> None:
    assert envelope_problem({"body": "eA==", "headers": {}, "properties": {
        "delivery_tag": "t", "body_encoding": "base64", "delivery_info": {}}}) is None


def test_basic_get_skips_poison_entries_into_the_quarantine(
    redis_server: RedisServer,
) -> None:
    kombu_guard.install()
    queue = "guard-poison-" + uuid.uuid4().hex[:8]
    admin = redis.Redis.from_url(redis_server.url)
    admin.delete(keys.QUARANTINE)
    try:
        with Connection(redis_server.url) as connection:  # type: ignore[no-untyped-call]
            simple = connection.SimpleQueue(queue)
            simple.put({"n": 1})
            good = admin.rpop(queue)
            assert isinstance(good, bytes)
            admin.lpush(queue, b"not json at all", b"[1, 2]", good)
            # basic_get (kombu's SimpleQueue) pops entries oldest first: the two poison
            # entries go to the quarantine, the good message still comes out
            message = simple.get(timeout=2)
            assert message.payload == {"n": 1}
            message.ack()
            simple.close()
        entries = [json.loads(row) for row in admin.lrange(keys.QUARANTINE, 0, -1)]
        assert [(e["reason"], e["queue"]) for e in entries] == [
            ("not_an_envelope", queue), ("not_json", queue)]
        assert base64.b64decode(entries[1]["raw"]) == b"not json at all"
        assert entries[1]["size"] == len(b"not json at all") and not entries[1]["truncated"]
    finally:
        admin.delete(keys.QUARANTINE, queue)
