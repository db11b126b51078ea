"""This worker process's heartbeat: a thread that tells Redis it is alive.

Each worker process (a Celery worker's main process, and each of its pool processes)
starts one `Heartbeat` (`start_heartbeat`). Its thread renews the process's entry in
the liveness registry (`kie_covers.store.liveness`) every COVERS_HEARTBEAT_INTERVAL
seconds. Being a thread, it keeps beating while a task waits on a slow HTTP call, so a
live worker in a call up to KIE_HTTP_TIMEOUT is never taken for dead; a killed process
stops beating, and after COVERS_DEAD_AFTER seconds any live worker's dispatcher hands
its jobs back.

The main process also ties each cover message it reserves (`tie`, from Celery's
``task_received`` signal) to itself, and unties it once the message has left its hands
(the thread checks `still_held` each beat). Pool processes tie runs as they begin
(`current_holder`, `kie_covers.store.jobs.JobStore.begin`) and note them while they
last (`holding`); a job a live pool process holds but has not run for two beats in a
row (a run whose end could not be recorded while Redis was out of reach) is given back
with its lock, so it does not wait for the lock's TTL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence

import redis

from kie_covers.config import get_settings
from kie_covers.runtime.connections import get_redis
from kie_covers.runtime.process import per_process
from kie_covers.store.liveness import Liveness

log = logging.getLogger("covers.liveness")

#: What a main process still holds (the ids of the cover messages it has reserved).
StillHeld = Callable[[], Collection[str]]
#: Seconds a tied message may be missing from `StillHeld` before it is untied: Celery
#: sends ``task_received`` just before it lists the message as reserved.
UNTIE_GRACE_S = 0.25


class Heartbeat:
    """One worker process's heartbeat thread and the messages it has tied.

    Args:
        liveness: the registry.
        holder: this process's holder id (`kie_covers.store.liveness.holder_id`).
        interval_s: seconds between beats (COVERS_HEARTBEAT_INTERVAL, default 1).
        still_held: for a main process, what it still holds; each beat unties the
            messages it tied that are no longer in it. None for a pool process.
        check_runs: for a pool process: each beat gives back what it holds but has
            not run (`holding`) for two beats in a row.
    """

    def __init__(self, liveness: Liveness, holder: str, interval_s: float,
                 still_held: StillHeld | None = None, check_runs: bool = False) -> None:
        self.liveness = liveness
        self.holder = holder
        self.interval_s = interval_s
        self.still_held = still_held
        self.pid = os.getpid()
        self.check_runs = check_runs
        self._tied: dict[str, float] = {}  # job id -> monotonic time it was tied
        self._running: set[str] = set()  # jobs whose run is in progress here
        self._stray: set[str] = set()  # held, not running, at the last beat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok: float | None = None
        #: Monotonic time from which this process may take others for dead (None: not
        #: while its own beats fail). After a break in its own beats, COVERS_DEAD_AFTER
        #: later: if Redis was out of reach for it, it was for others too.
        self._reap_from: float | None = None

    # --- the thread ---------------------------------------------------------------

    def start(self) -> None:
        """Beat once now (so the process is registered before it takes a job), then
        every interval in a daemon thread."""
        self.beat_once()
        self._thread = threading.Thread(target=self._loop, name="covers-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat_once()
            except Exception:  # the thread must outlive any surprise: it is the liveness
                log.exception("heartbeat of %s failed; trying again in %.1fs", self.holder,
                              self.interval_s)

    def beat_once(self) -> None:
        """One beat, then untie what the process no longer holds; never raises."""
        try:
            first = self.liveness.beat(self.holder)
        except redis.RedisError as error:
            self._reap_from = None
            log.warning("heartbeat of %s failed (%s); trying again in %.1fs", self.holder,
                        type(error).__name__, self.interval_s)
            return
        now = time.monotonic()
        if self._last_ok is None:
            self._reap_from = now
        elif now - self._last_ok > 2 * self.interval_s or self._reap_from is None:
            self._reap_from = now + self.liveness.dead_after_s
        if first and self._last_ok is not None:
            self._registered_again(now - self._last_ok)
        self._last_ok = now
        self._untie_released(now)
        if self.check_runs:
            self._give_back_strays()

    def _registered_again(self, since_last_s: float) -> None:
        """The heartbeat's entry was gone: tie this process's messages again."""
        if since_last_s >= self.liveness.dead_after_s:
            log.warning("this worker process (%s) was taken for dead (no heartbeat for "
                        "%.1fs): its jobs were handed to other workers", self.holder,
                        since_last_s)
        else:
            log.warning("the heartbeat entry of this worker process (%s) was gone (Redis "
                        "emptied or restarted without its data?): registered again",
                        self.holder)
        self._tie_again()

    def may_reap(self) -> bool:
        """True when this process's own beats are steady enough to judge others dead."""
        now = time.monotonic()
        return (self._reap_from is not None and now >= self._reap_from
                and self._last_ok is not None and now - self._last_ok < 2 * self.interval_s)

    def stop(self, give_back: Sequence[str] | None = None) -> int:
        """Stop beating and leave the registry (warm shutdown).

        Args:
            give_back: the jobs to send again at once; None gives back every job this
                process holds.

        Returns:
            How many jobs went back to the due set.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        try:
            return self.liveness.leave(self.holder, give_back)
        except redis.RedisError as error:
            log.warning("could not leave the liveness registry (%s): the jobs of %s go "
                        "back once its heartbeat lapses", type(error).__name__, self.holder)
            return 0

    # --- messages a main process holds --------------------------------------------

    def tie(self, job_id: str) -> None:
        """Tie a reserved message's job to this process (at once: it may die next)."""
        with self._lock:
            self._tied[job_id] = time.monotonic()
        self.liveness.tie(self.holder, [job_id])

    def tied(self) -> set[str]:
        """The jobs of the messages this process tied and still holds."""
        with self._lock:
            return set(self._tied)

    def _untie_released(self, now: float) -> None:
        if self.still_held is None:
            return
        held = set(self.still_held())
        with self._lock:
            # A message is tied just before Celery lists it as reserved: a short grace.
            gone = [job for job, since in self._tied.items()
                    if job not in held and now - since > UNTIE_GRACE_S]
            for job in gone:
                del self._tied[job]
        try:
            self.liveness.untie(self.holder, gone)
        except redis.RedisError:
            with self._lock:  # try again next beat
                self._tied.update(dict.fromkeys(gone, now))

    # --- runs a pool process holds -------------------------------------------------

    @contextlib.contextmanager
    def running(self, job_id: str) -> Iterator[None]:
        """Note that this process runs `job_id` for the length of the block."""
        with self._lock:
            self._running.add(job_id)
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(job_id)

    def _give_back_strays(self) -> None:
        try:
            held = self.liveness.held(self.holder)
        except redis.RedisError:
            return
        with self._lock:
            stray = held - self._running
        # Held and not running at two beats in a row: no run will let go of it.
        confirmed = sorted(stray & self._stray)
        self._stray = stray - set(confirmed)
        if not confirmed:
            return
        try:
            given = self.liveness.give_back(self.holder, confirmed)
        except redis.RedisError:
            self._stray |= set(confirmed)  # try again next beat
            return
        log.warning("%d jobs held by this worker process (%s) but not run by it were "
                    "sent again (%d still waiting)", len(confirmed), self.holder, given)

    def _tie_again(self) -> None:
        try:
            self.liveness.tie(self.holder, self.tied())
        except redis.RedisError:
            log.warning("could not tie the held jobs of %s again", self.holder)


@per_process
def get_liveness() -> Liveness:
    """The liveness registry of this process (COVERS_DEAD_AFTER from the settings)."""
    return Liveness(get_redis(), get_settings().dead_after)


#: This process's heartbeat, under "current" (a dict: no `global` statement needed).
_started: dict[str, Heartbeat] = {}


def install_heartbeat(liveness: Liveness, holder: str, interval_s: float,
                      still_held: StillHeld | None = None, check_runs: bool = False
                      ) -> Heartbeat:
    """Make this process's heartbeat, not started yet (replacing one inherited from a
    forking parent, which is kept as `reserving_holder`). A worker's main process does
    this before its pool forks, so each pool process knows its holder id."""
    inherited = _started.get("current")
    if inherited is not None and inherited.pid != os.getpid():
        _started["parent"] = inherited  # a pool process: its main process reserves
    beat = _started["current"] = Heartbeat(liveness, holder, interval_s, still_held,
                                           check_runs)
    return beat


def start_heartbeat(liveness: Liveness, holder: str, interval_s: float,
                    still_held: StillHeld | None = None, check_runs: bool = False
                    ) -> Heartbeat:
    """`install_heartbeat`, then start it."""
    beat = install_heartbeat(liveness, holder, interval_s, still_held, check_runs)
    beat.start()
    return beat


def current() -> Heartbeat | None:
    """This process's heartbeat, if it started one (not one inherited through a fork)."""
    beat = _started.get("current")
    return beat if beat is not None and beat.pid == os.getpid() else None


def current_holder() -> str | None:
    """This process's holder id (None outside a worker: nothing is tied then)."""
    beat = current()
    return None if beat is None else beat.holder


def reserving_holder() -> str | None:
    """The holder id of the process that reserves this process's messages: the main
    process that forked this pool process, or this process itself (a solo pool)."""
    parent = _started.get("parent")
    if parent is not None and parent.pid == os.getppid():
        return parent.holder
    return current_holder()


@contextlib.contextmanager
def holding(job_id: str) -> Iterator[None]:
    """Note, for this process's heartbeat, that it runs `job_id` during the block (a
    no-op outside a worker)."""
    beat = current()
    if beat is None:
        yield
        return
    with beat.running(job_id):
        yield
