"""The guard that keeps workers alive through kombu's close-after-lost-connection fault."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu.connection import Connection

from kie_covers.runtime import kombu_guard
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
