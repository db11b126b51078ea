"""Sends the message of every job whose wait is over.

Each worker process runs one `DueDispatcher` thread beside its pool. Every
``COVERS_DISPATCH_INTERVAL`` seconds it claims the jobs whose time in the due
set (`kie_covers.store.due.Due.JOBS`) has come (a poll, the end of a retry wait, or a run
that never reported back) and sends their task message again, under the same
job id. A round's claim is one Lua script (`DueSets.claim`, one round trip)
that renews the claimed entries' leases, so many workers can run this at once
without sending a job twice per lease, and a worker that dies after claiming
loses nothing. Outcome notices
(`Due.NOTICES`) and image copies (`Due.COPIES`) are
claimed and sent the same way.

A message claimed but refused by the broker (a full Redis: maxmemory reached) is
kept and sent first in the next round, before anything new is claimed: its claim
renewed its lease, so dropping it would leave its job waiting a whole lease. While
Redis is full the rounds back off (up to `LONGEST_WAIT_S`) with one warning each.

The same thread is the worker's heartbeat: it writes the worker's node name to
`keys.WORKERS` as it runs (`kie_covers.store.workers.WorkerBeats`, at most once a
second), so the cluster overview can count live workers; a clean stop takes the
name out.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from celery import Celery, bootsteps
from kombu.exceptions import OperationalError

from kie_covers.config import get_settings
from kie_covers.runtime.connections import get_redis, get_store
from kie_covers.runtime.full_redis import FIRST_WAIT_S, LONGEST_WAIT_S, is_redis_full
from kie_covers.runtime.messages import send_images, send_job, send_notice
from kie_covers.store.workers import BEAT_EVERY_S, WorkerBeats

# Imported here, before the pool forks, so each child shares them (see
# `_preload_then_freeze`); the worker registers their tasks from this same import.
from kie_covers.tasks import cover, failures, images, notify  # noqa: F401

log = logging.getLogger("covers.dispatcher")

#: Jobs claimed per Redis round trip.
CLAIM_BATCH = 200
#: Shortest pause between rounds, in seconds.
MIN_PAUSE_S = 0.005


class DueDispatcher:
    """Claims due jobs and re-sends their messages.

    Args:
        app: the Celery app to send with.
        interval_s: seconds between rounds.
        lease_s: seconds a claimed job has before it is claimed again.
        node: the worker's node name for its heartbeat; None: no heartbeat.
    """

    def __init__(self, app: Celery, interval_s: float, lease_s: float,
                 node: str | None = None) -> None:
        self.app = app
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.node = node
        self._beats: WorkerBeats | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Sends of claimed messages not made yet (the broker refused them), oldest first.
        self._unsent: deque[Callable[[], None]] = deque()

    def run_once(self) -> tuple[int, float | None]:
        """One round: claim what is due and send it.

        Returns:
            (messages sent, seconds until the next entry is due or None if nothing
            waits).
        """
        store = get_store()
        sent = self._send_unsent()
        while True:
            claimed = store.due.claim(self.lease_s, CLAIM_BATCH)
            self._unsent.extend(
                partial(send_job, job.job_id, job.music_task_id, job.callback_url,
                        job.queue or None) for job in claimed.jobs)
            self._unsent.extend(partial(send_notice, job_id, queue or None)
                                for job_id, queue in claimed.notices)
            self._unsent.extend(partial(send_images, job_id, queue or None)
                                for job_id, queue in claimed.copies)
            sent += self._send_unsent()
            if claimed.largest < CLAIM_BATCH:
                return sent, claimed.next_due_in_s

    def _send_unsent(self) -> int:
        """Send the claimed messages not sent yet, oldest first; returns how many.

        Raises what the broker raises. A message refused for a full Redis or a broker
        out of reach stays first in line; one refused for anything else is dropped
        (its job comes back when its lease ends), so it cannot block the others.
        """
        sent = 0
        while self._unsent:
            try:
                self._unsent[0]()
            except Exception as error:
                if not (is_redis_full(error) or isinstance(error, OperationalError)):
                    self._unsent.popleft()
                raise
            self._unsent.popleft()
            sent += 1
        return sent

    def _beat(self) -> None:
        if self.node is None:
            return
        if self._beats is None:
            self._beats = WorkerBeats(get_redis(), self.node,
                                      min(BEAT_EVERY_S, self.interval_s))
        self._beats.beat()

    def _loop(self) -> None:
        pause, full_wait = self.interval_s, FIRST_WAIT_S
        try:
            self._beat()  # live from the start, not one interval later
        except Exception:
            log.exception("heartbeat failed; trying again in %.1fs", self.interval_s)
        while not self._stop.wait(pause):
            try:
                self._beat()
                _, next_in = self.run_once()
                # Wake for the next due entry rather than a whole interval later, so a
                # rate-limit slot or a poll is kept to within a few milliseconds.
                pause = self.interval_s if next_in is None else \
                    min(self.interval_s, max(MIN_PAUSE_S, next_in))
                full_wait = FIRST_WAIT_S
            except Exception as error:  # keep dispatching through a Redis blip
                if not is_redis_full(error):
                    log.exception("dispatch round failed; trying again in %.1fs",
                                  self.interval_s)
                    pause = self.interval_s
                    continue
                pause, full_wait = full_wait, min(LONGEST_WAIT_S, full_wait * 2)
                log.warning("Redis is full (maxmemory reached: %s); %d claimed message(s) "
                            "wait to be sent; the dispatcher tries again in %.1fs",
                            error, len(self._unsent), pause)

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._loop, name="covers-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for the current round)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._beats is not None:
            try:
                self._beats.gone()
            except Exception:  # stopping must not fail on a Redis blip
                log.warning("could not take worker %s out of the live set", self.node)


def _preload_then_freeze() -> None:
    """Import what every task run needs, then freeze the heap, before the pool forks.

    Prefork children share the parent's memory copy-on-write. Modules imported in
    each child, and the garbage collector walking (and so writing to) every object,
    turn shared pages into private copies: each child then grows by tens of MB.
    """
    # The task modules (and with them everything a run uses) are imported at the top
    # of this module, so they are in the heap frozen here.
    gc.collect()
    gc.freeze()


class DispatcherStep(bootsteps.StartStopStep):
    """Worker bootstep that checks the settings and runs a `DueDispatcher`."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings = get_settings()
        settings.require_api_key()
        _preload_then_freeze()
        self.dispatcher = DueDispatcher(parent.app, settings.dispatch_interval,
                                        settings.redispatch_after,
                                        node=getattr(parent, "hostname", None))

    def start(self, parent: Any) -> None:
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        self.dispatcher.stop()
