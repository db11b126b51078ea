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

A message claimed but refused by the broker (a full Redis: maxmemory reached) is
kept and sent first in the next round, before anything new is claimed: its claim
renewed its lease, so dropping it would leave its job waiting a whole lease. While
Redis is full the rounds back off (up to `LONGEST_WAIT_S`) with one warning each.

Each round also checks the liveness registry (`kie_covers.store.liveness`): the jobs
of a worker process whose heartbeat lapsed COVERS_DEAD_AFTER seconds ago are made due
at once and sent again in the same round. The bootstep runs the main process's
liveness heartbeat (`kie_covers.runtime.heartbeat`, a thread of its own, so it beats
whatever this thread waits on) and, at a warm shutdown, gives back the jobs of the
messages it reserved but never started.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from celery import Celery, bootsteps
from celery.worker import state as worker_state
from kombu.exceptions import OperationalError

from kie_covers.config import get_settings
from kie_covers.runtime.connections import get_limiters, get_store
from kie_covers.runtime.full_redis import FIRST_WAIT_S, LONGEST_WAIT_S, is_redis_full
from kie_covers.runtime.heartbeat import Heartbeat, get_liveness, install_heartbeat
from kie_covers.runtime.messages import send_images, send_job, send_notice
from kie_covers.store.liveness import holder_id

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
        heartbeat: this process's liveness heartbeat; with it, each round first hands
            back the jobs of dead worker processes (at most once per heartbeat
            interval).
    """

    def __init__(self, app: Celery, interval_s: float, lease_s: float,
                 heartbeat: Heartbeat | None = None) -> None:
        self.app = app
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.heartbeat = heartbeat
        self._next_reap = 0.0
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
        if self.heartbeat is not None and time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + self.heartbeat.interval_s
            self.reap_once()
        # Hand out the generate slots free now: the jobs granted are due now and
        # claimed just below.
        granted = get_limiters().generate.grant()
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
                return sent, _sooner(claimed.next_due_in_s, granted.next_in_s)

    def reap_once(self) -> int:
        """Hand back the jobs of worker processes whose heartbeat lapsed (unless this
        process's own beats are not steady: then it cannot tell who is dead).

        Returns:
            How many jobs went back to the due set.
        """
        beat = self.heartbeat
        if beat is None or not beat.may_reap():
            return 0
        handed = 0
        for dead in beat.liveness.reap():
            log.warning("worker process %s has had no heartbeat for %gs: %d of its jobs "
                        "sent again", dead.holder, beat.liveness.dead_after_s, dead.jobs)
            handed += dead.jobs
        return handed

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

    def _loop(self) -> None:
        # Rounds come at least once per heartbeat interval, so a dead worker's jobs
        # are handed back soon after its heartbeat lapses.
        longest = self.interval_s if self.heartbeat is None else \
            min(self.interval_s, self.heartbeat.interval_s)
        pause, full_wait = longest, FIRST_WAIT_S
        while not self._stop.wait(pause):
            try:
                _, next_in = self.run_once()
                # Wake for the next due entry (or the next free generate slot) rather
                # than a whole interval later, so a slot or a poll is kept to within a
                # few milliseconds.
                pause = longest if next_in is None else min(longest, max(MIN_PAUSE_S, next_in))
                full_wait = FIRST_WAIT_S
            except Exception as error:  # keep dispatching through a Redis blip
                if not is_redis_full(error):
                    log.exception("dispatch round failed; trying again in %.1fs", longest)
                    pause = longest
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


def _ids(requests: Any) -> set[str]:
    """The ids of a live set of Celery requests (another thread may change it)."""
    for _ in range(5):
        try:
            return {request.id for request in list(requests)}
        except RuntimeError:  # changed size during iteration: read it again
            continue
    return set()


def reserved_ids() -> set[str]:
    """Ids of the messages this worker's main process has reserved (started or not)."""
    return _ids(worker_state.reserved_requests)


class DispatcherStep(bootsteps.StartStopStep):
    """Worker bootstep that checks the settings, beats for the main process and runs a
    `DueDispatcher`; at a warm shutdown it gives back the messages it never started."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings = get_settings()
        settings.require_api_key()
        _preload_then_freeze()
        node = getattr(parent, "hostname", None)
        # Made now, before the pool forks, so each pool process knows this holder id
        # (its runs take the jobs out of this process's held set as they begin).
        self.heartbeat: Heartbeat | None = install_heartbeat(
            get_liveness(), holder_id(str(node or "worker"), "worker"),
            settings.heartbeat_interval, reserved_ids)
        self.dispatcher = DueDispatcher(parent.app, settings.dispatch_interval,
                                        settings.redispatch_after,
                                        heartbeat=self.heartbeat)

    def start(self, parent: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.start()
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        self.dispatcher.stop()
        if self.heartbeat is not None:
            unstarted = sorted(self.heartbeat.tied() - _ids(worker_state.active_requests))
            given = self.heartbeat.stop(unstarted)
            self.heartbeat = None
            if unstarted:
                log.info("shutting down: %d unstarted jobs given back to other workers",
                         given)
