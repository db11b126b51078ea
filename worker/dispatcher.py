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
claimed and sent the same way. Each round first hands out the generate slots free
now to the jobs waiting for one (`kie_covers.store.fair.FairLimiter.grant`), in
the fair order; the jobs granted are due at once, so the same round sends them.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any, ClassVar

from celery import Celery, bootsteps

from kie_covers.config import get_settings
from kie_covers.runtime.connections import get_limiters, get_store
from kie_covers.runtime.messages import send_images, send_job, send_notice

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
    """

    def __init__(self, app: Celery, interval_s: float, lease_s: float) -> None:
        self.app = app
        self.interval_s = interval_s
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> tuple[int, float | None]:
        """One round: claim what is due and send it.

        Returns:
            (messages sent, seconds until the next entry is due or None if nothing
            waits).
        """
        store = get_store()
        # First hand out the generate slots free now: the jobs granted are due now and
        # claimed just below.
        granted = get_limiters().generate.grant()
        sent = 0
        while True:
            claimed = store.due.claim(self.lease_s, CLAIM_BATCH)
            for job in claimed.jobs:
                send_job(job.job_id, job.music_task_id, job.callback_url, job.queue or None)
            for job_id, queue in claimed.notices:
                send_notice(job_id, queue or None)
            for job_id, queue in claimed.copies:
                send_images(job_id, queue or None)
            sent += claimed.count
            if claimed.largest < CLAIM_BATCH:
                return sent, _sooner(claimed.next_due_in_s, granted.next_in_s)

    def _loop(self) -> None:
        pause = self.interval_s
        while not self._stop.wait(pause):
            try:
                _, next_in = self.run_once()
                # Wake for the next due entry (or the next free generate slot) rather
                # than a whole interval later, so a slot or a poll is kept to within a
                # few milliseconds.
                pause = self.interval_s if next_in is None else \
                    min(self.interval_s, max(MIN_PAUSE_S, next_in))
            except Exception:  # keep dispatching through a Redis blip
                log.exception("dispatch round failed; trying again in %.1fs", self.interval_s)
                pause = self.interval_s

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._loop, name="covers-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for the current round)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _sooner(first: float | None, second: float | None) -> float | None:
    """The sooner of two waits in seconds (None: nothing to wait for)."""
    if first is None or second is None:
        return second if first is None else first
    return min(first, second)


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
                                        settings.redispatch_after)

    def start(self, parent: Any) -> None:
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        self.dispatcher.stop()
