"""The worker's Celery consumer: poison messages go to the quarantine; a full Redis is a pause.

Installed through Celery's ``worker_consumer`` setting (`kie_covers.worker.celery`).
It changes five of Celery's documented consumer callbacks and nothing else:

- ``on_decode_error`` (the body is not what its content type says),
  ``on_invalid_task`` (a content type the workers refuse, a malformed task) and
  ``on_unknown_message`` (a message that is no task): the message is quarantined
  (`kie_covers.runtime.poison.quarantine`: stored, logged once without its content,
  counted) and taken off the queue, where Celery would log its body and drop it.
- ``on_connection_error_before_connected`` / ``..._after_connected``: when the
  "connection error" is a full Redis (`kie_covers.runtime.kombu_guard` makes it
  one; a worker started while Redis is full meets it declaring its queues), it
  logs why and waits (doubling from `FIRST_WAIT_S` up to `LONGEST_WAIT_S`) before
  Celery connects again, instead of reconnecting in a tight loop.

Entries that kombu itself cannot decode never reach here: the kombu guard
quarantines them.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from kie_covers.runtime.full_redis import FIRST_WAIT_S, LONGEST_WAIT_S, is_redis_full
from kie_covers.runtime.poison import (
    BAD_BODY,
    CONTENT_TYPE,
    INVALID_TASK,
    NOT_A_TASK,
    quarantine,
)

log = logging.getLogger("covers.consumer")

#: Seconds after which a new full-Redis reconnect starts from `FIRST_WAIT_S` again.
CALM_AFTER_S = 60.0


def raw_of(message: Any) -> bytes:
    """A message as it was on the broker: kombu's envelope for Redis (re-encoded as
    JSON), else its body."""
    envelope = getattr(message, "_raw", None)
    if isinstance(envelope, dict):
        return json.dumps(envelope).encode()
    body = message.body
    return body if isinstance(body, bytes) else str(body).encode()


def _queue_of(message: Any) -> str:
    info = getattr(message, "delivery_info", None) or {}
    return str(info.get("routing_key") or "")


class QuarantiningConsumer(Consumer):  # type: ignore[misc]  # Celery is untyped
    """Celery's consumer, with poison messages quarantined (see the module docstring)."""

    _full_wait_s = FIRST_WAIT_S
    _full_since = 0.0

    def _quarantine(self, message: Any, reason: str, error: BaseException | None) -> None:
        detail = f"{type(error).__name__}: {error}" if error is not None else reason
        quarantine(raw_of(message), reason, _queue_of(message), detail)

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        """Quarantine a message whose body does not decode, and acknowledge it."""
        reason = CONTENT_TYPE if isinstance(exc, ContentDisallowed) else BAD_BODY
        self._quarantine(message, reason, exc)
        message.ack()

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        """Quarantine a refused content type or a malformed task message, and reject it."""
        reason = CONTENT_TYPE if isinstance(exc, ContentDisallowed) else INVALID_TASK
        self._quarantine(message, reason, exc)
        message.reject_log_error(log, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """Quarantine a message that is no task message, and reject it."""
        self._quarantine(message, NOT_A_TASK, None)
        message.reject_log_error(log, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=None)

    def _back_off_if_full(self, exc: BaseException) -> None:
        """When `exc` is a full Redis, say so and wait before Celery reconnects."""
        if not is_redis_full(exc):
            return
        if time.monotonic() - self._full_since > CALM_AFTER_S:
            self._full_wait_s = FIRST_WAIT_S
        log.warning("Redis is full (maxmemory reached: %s); the consumer waits %.1fs, "
                    "then connects again", exc, self._full_wait_s)
        time.sleep(self._full_wait_s)
        self._full_since = time.monotonic()
        self._full_wait_s = min(LONGEST_WAIT_S, self._full_wait_s * 2)

    def on_connection_error_before_connected(self, exc: BaseException) -> None:
        """A full Redis while connecting (declaring the queues writes): back off first."""
        self._back_off_if_full(exc)
        super().on_connection_error_before_connected(exc)

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        """A full Redis that broke the connection: back off before Celery reconnects."""
        self._back_off_if_full(exc)
        super().on_connection_error_after_connected(exc)
