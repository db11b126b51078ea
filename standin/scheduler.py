"""One thread that runs callables at their due time, instead of a thread per cover.

A stand-in may hold 100,000 covers in flight, each to be finished and
announced at its own moment. A timer thread each does not fit (threads run
out, and every stack costs memory), so pending calls wait as small entries in
a heap, ordered by due time, and one daemon thread sleeps on a condition
variable until the earliest is due. Calls that may block (a callback POST
waits on its receiver) go to a small bounded pool of daemon workers, so a
slow receiver holds up no other call's timing and pending calls hold no
thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)

#: Default number of worker threads that run due calls (at most; made as needed).
DEFAULT_WORKERS = 16


class Scheduled:
    """One pending call; :meth:`Scheduler.cancel` takes it.

    Attributes:
        due: ``time.monotonic()`` seconds at which it runs.
        seq: tie-breaker: calls due at the same moment run in the order scheduled.
    """

    # Slots: 100,000 of these may wait at once; no per-entry dict.
    __slots__ = ("args", "due", "fn", "seq")

    def __init__(
        self, due: float, seq: int, fn: Callable[..., object] | None, args: tuple[Any, ...]
    ) -> None:
        self.due = due
        self.seq = seq
        self.fn = fn  # None once cancelled or taken
        self.args = args

    def __lt__(self, other: Scheduled) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


class Scheduler:
    """Runs ``fn(*args)`` at a due time, from one daemon thread and a bounded worker pool.

    Calls scheduled before :meth:`start` wait until it. :meth:`stop` drops the
    pending calls and ends the threads; the scheduler can be started again.
    An exception in a call is logged and does not stop the scheduler. Every
    method is thread-safe, and may be called from a running call.
    """

    def __init__(self, name: str = "scheduler", workers: int = DEFAULT_WORKERS) -> None:
        """Prepare a scheduler; no thread runs until :meth:`start`.

        Args:
            name: prefix of its threads' names.
            workers: at most this many threads run due calls, so calls may
                overlap and block; 0 runs each call on the scheduler thread
                itself, strictly in due order (only for calls that never block).
                Default ``DEFAULT_WORKERS``.

        Raises:
            ValueError: when ``workers`` is negative.
        """
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers!r}")
        self._name = name
        self._max_workers = workers
        # One lock; the scheduler thread waits on _cond (the heap changed), the
        # workers on _work (a due call is ready).
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._work = threading.Condition(lock)
        self._heap: list[Scheduled] = []
        self._seq = itertools.count()
        self._pending = 0  # entries in the heap not cancelled
        self._running = False
        # Bumped by stop(): threads of an earlier run see it and end, even if
        # the scheduler was started again before they woke.
        self._generation = 0
        self._thread: threading.Thread | None = None
        # Due calls handed to the pool, the pool's threads and how many are idle.
        self._ready: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._workers = 0
        self._idle = 0

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Scheduler:
        """Start the scheduler thread (idempotent); returns ``self``."""
        with self._cond:
            if self._running:
                return self
            self._running = True
            self._thread = threading.Thread(
                target=self._loop, args=(self._generation,), name=self._name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Drop every pending call and end the threads (idempotent).

        Waits up to ``timeout_s`` seconds for the scheduler thread; calls
        already running finish on their own (workers are daemon threads and
        are not waited for).
        """
        with self._cond:
            self._running = False
            self._generation += 1
            self._drop_pending()
            self._ready.clear()
            thread, self._thread = self._thread, None
            self._workers = 0
            self._idle = 0
            self._cond.notify_all()
            self._work.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # -- scheduling -------------------------------------------------------------

    def call_later(self, delay_s: float, fn: Callable[..., object], *args: Any) -> Scheduled:
        """Run ``fn(*args)`` in ``delay_s`` seconds (0 or less: as soon as possible)."""
        return self.call_at(time.monotonic() + delay_s, fn, *args)

    def call_at(self, due: float, fn: Callable[..., object], *args: Any) -> Scheduled:
        """Run ``fn(*args)`` at ``due`` (``time.monotonic()`` seconds)."""
        with self._cond:
            entry = Scheduled(due, next(self._seq), fn, args)
            heapq.heappush(self._heap, entry)
            self._pending += 1
            # Only a new earliest entry changes how long the thread must sleep.
            if self._heap[0] is entry:
                self._cond.notify_all()
        return entry

    def cancel(self, entry: Scheduled) -> bool:
        """Cancel one pending call; False when it already ran, started or was cancelled."""
        with self._cond:
            if entry.fn is None:
                return False
            # Left in the heap and skipped when it comes up: removal would cost O(n).
            entry.fn, entry.args = None, ()
            self._pending -= 1
            return True

    def cancel_all(self) -> int:
        """Cancel every pending call (not those already due and handed out); how many."""
        with self._cond:
            return self._drop_pending()

    def pending(self) -> int:
        """Calls waiting for their due time (cancelled ones not counted)."""
        with self._cond:
            return self._pending

    def _drop_pending(self) -> int:
        """Empty the heap (lock held); the number of calls dropped."""
        dropped = self._pending
        for entry in self._heap:
            entry.fn, entry.args = None, ()
        self._heap = []
        self._pending = 0
        return dropped

    # -- threads ----------------------------------------------------------------

    def _loop(self, generation: int) -> None:
        """The scheduler thread: sleep until the earliest call is due, then hand it out."""
        while True:
            with self._cond:
                call = self._next_due(generation)
                if call is None:
                    return  # stopped
                if self._max_workers > 0:
                    self._hand_to_pool(call)
                    continue
            self._run(*call)

    def _next_due(self, generation: int) -> tuple[Callable[..., object], tuple[Any, ...]] | None:
        """Wait (lock held) for the earliest call to fall due and take it out; None when stopped."""
        while self._running and generation == self._generation:
            if not self._heap:
                self._cond.wait()
                continue
            entry = self._heap[0]
            if entry.fn is None:  # cancelled
                heapq.heappop(self._heap)
                continue
            wait_s = entry.due - time.monotonic()
            if wait_s > 0:
                self._cond.wait(wait_s)
                continue
            heapq.heappop(self._heap)
            self._pending -= 1
            # Taken: from now on cancel() answers False.
            call = (entry.fn, entry.args)
            entry.fn, entry.args = None, ()
            return call
        return None

    def _hand_to_pool(self, call: tuple[Callable[..., object], tuple[Any, ...]]) -> None:
        """Queue a due call for the workers, adding one if none is idle (lock held)."""
        self._ready.append(call)
        if self._idle > 0:
            self._work.notify()
        if self._idle < len(self._ready) and self._workers < self._max_workers:
            self._workers += 1
            threading.Thread(
                target=self._serve,
                args=(self._generation,),
                name=f"{self._name}-worker-{self._workers}",
                daemon=True,
            ).start()

    def _serve(self, generation: int) -> None:
        """A pool thread: run due calls as they come; ends when the scheduler stops."""
        while True:
            with self._cond:
                while not self._ready and generation == self._generation:
                    self._idle += 1
                    self._work.wait()
                    if generation != self._generation:
                        return  # stopped: stop() set the idle count afresh
                    self._idle -= 1
                if generation != self._generation:
                    return
                fn, args = self._ready.popleft()
            self._run(fn, args)

    @staticmethod
    def _run(fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        """Run one call; its exception is logged, never raised (the thread must go on)."""
        try:
            fn(*args)
        except Exception:
            _log.exception("scheduled call %r failed", fn)
