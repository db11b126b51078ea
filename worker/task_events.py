"""Tell the other processes that this worker sends task events.

Task events are off by default (`kie_covers.runtime.celeryconfig`); a worker started
with ``-E``, or told by a monitor (Flower's ``enable_events``, or
``celery -A kie_covers.worker control enable_events``), sends them. While it does,
this consumer step renews a mark in Redis every
`kie_covers.runtime.task_view.EVENTS_MARK_EVERY_S` seconds, so `covers web` knows to
send the task event of each job it ends (`kie_covers.runtime.task_view.announce_end`).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import bootsteps

from kie_covers.runtime.task_view import EVENTS_MARK_EVERY_S, mark_task_events

log = logging.getLogger("covers.events")


def task_events_sent(consumer: Any) -> bool:
    """True if `consumer`'s event dispatcher sends the ``task`` group now."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    return bool(dispatcher is not None and dispatcher.enabled
                and (not dispatcher.groups or "task" in dispatcher.groups))


class TaskEventsMark(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery: no hints
    """Consumer step: keeps the task-events mark while this worker sends task events."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None

    def start(self, c: Any) -> None:
        self._timer = c.timer.call_repeatedly(EVENTS_MARK_EVERY_S, self.renew, (c,))

    def stop(self, c: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def renew(self, c: Any) -> None:
        """Renew the mark if this worker sends task events (no Redis call otherwise)."""
        if not task_events_sent(c):
            return
        try:
            mark_task_events(c.hostname)
        except redis.RedisError as error:  # Redis out of reach: the mark just lapses
            log.debug("task-events mark not renewed: %s", type(error).__name__)
