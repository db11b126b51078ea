"""The stand-in's scheduler: one thread and a bounded pool, never a thread per pending call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kie_covers.standin.config import StandinConfig
from kie_covers.standin.scheduler import Scheduler
from kie_covers.standin.state import Accepted, StandinState

#: Generous: the machine is shared, so conditions are polled, never timed.
WAIT_S = 30.0


def _wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


class _Recorder:
    """Records calls, thread-safely."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self._lock = threading.Lock()

    def __call__(self, item: object) -> None:
        with self._lock:
            self.calls.append(item)

    def count(self) -> int:
        with self._lock:
            return len(self.calls)


@pytest.fixture
def inline() -> Iterator[Scheduler]:
    """A started scheduler that runs calls on its own thread (strict order)."""
    scheduler = Scheduler("test-inline", workers=0).start()
    yield scheduler
    scheduler.stop()


def test_calls_run_in_due_order_then_scheduling_order(inline: Scheduler) -> None:
    recorder = _Recorder()
    gate = threading.Event()
    # Everything is scheduled while the thread is held, so the order comes
    # from the heap, not from when the calls were made.
    inline.call_later(0, gate.wait)
    base = time.monotonic() + 0.05
    offsets = [0.3, 0.1, 0.2, 0.0, 0.2, 0.1]
    for n, offset in enumerate(offsets):
        inline.call_at(base + offset, recorder, (offset, n))
    gate.set()
    assert _wait_until(lambda: recorder.count() == len(offsets))
    assert recorder.calls == sorted((offset, n) for n, offset in enumerate(offsets))
    assert inline.pending() == 0


def test_a_call_never_runs_before_it_is_due(inline: Scheduler) -> None:
    ran_at: list[float] = []
    due = time.monotonic() + 0.2
    inline.call_at(due, lambda: ran_at.append(time.monotonic()))
    assert _wait_until(lambda: len(ran_at) == 1)
    assert ran_at[0] >= due


def test_cancel_one_and_cancel_all(inline: Scheduler) -> None:
    recorder = _Recorder()
    gate = threading.Event()
    inline.call_later(0, gate.wait)
    kept = inline.call_later(0.05, recorder, "kept")
    cancelled = inline.call_later(0.05, recorder, "cancelled")
    assert inline.cancel(cancelled) is True
    assert inline.cancel(cancelled) is False  # only once
    assert inline.pending() == 2  # the gate's call is already taken by the thread
    gate.set()
    assert _wait_until(lambda: recorder.count() == 1)
    assert recorder.calls == ["kept"]
    assert inline.cancel(kept) is False  # already ran

    later = [inline.call_later(0.05, recorder, n) for n in range(5)]
    assert inline.pending() == 5
    assert inline.cancel_all() == 5
    assert inline.pending() == 0
    assert not any(inline.cancel(entry) for entry in later)
    # A call scheduled after them still runs, and it is the only one.
    inline.call_later(0.1, recorder, "after")
    assert _wait_until(lambda: recorder.count() == 2)
    assert recorder.calls == ["kept", "after"]


def test_stop_drops_pending_calls_ends_the_threads_and_can_start_again() -> None:
    scheduler = Scheduler("test-stop", workers=2).start()
    recorder = _Recorder()
    for n in range(4):
        scheduler.call_later(0, recorder, n)
    assert _wait_until(lambda: recorder.count() == 4)
    scheduler.call_later(3600, recorder, "never")
    assert scheduler.pending() == 1
    scheduler.stop()
    scheduler.stop()  # idempotent
    assert scheduler.pending() == 0
    assert _wait_until(lambda: not _threads_named("test-stop"))

    scheduler.call_later(0, recorder, "before start")  # waits for start()
    assert scheduler.pending() == 1
    scheduler.start()
    try:
        assert _wait_until(lambda: recorder.count() == 5)
        assert recorder.calls[-1] == "before start"
    finally:
        scheduler.stop()


@pytest.mark.parametrize("workers", [0, 2])
def test_an_exception_in_a_call_does_not_stop_the_scheduler(
    workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler("test-raise", workers=workers).start()
    recorder = _Recorder()

    def boom() -> None:
        raise RuntimeError("boom")

    try:
        for n in range(3):
            scheduler.call_later(0, boom)
            scheduler.call_later(0, recorder, n)
        assert _wait_until(lambda: recorder.count() == 3)
        assert sorted(recorder.calls) == [0, 1, 2]  # type: ignore[type-var]
        assert _wait_until(lambda: caplog.text.count("RuntimeError: boom") == 3)
    finally:
        scheduler.stop()


def test_many_pending_calls_hold_no_threads() -> None:
    scheduler = Scheduler("test-many", workers=4).start()
    recorder = _Recorder()
    try:
        far = [scheduler.call_later(3600, recorder, n) for n in range(100_000)]
        assert scheduler.pending() == 100_000
        assert len(_threads_named("test-many")) == 1  # the scheduler thread only
        # Calls due now go through the bounded pool while those wait.
        for n in range(10_000):
            scheduler.call_later(0, recorder, n)
        assert _wait_until(lambda: recorder.count() == 10_000)
        assert sorted(recorder.calls) == list(range(10_000))  # type: ignore[type-var]
        assert len(_threads_named("test-many")) <= 1 + 4
        assert scheduler.cancel(far[0]) is True
        assert scheduler.cancel_all() == 100_000 - 1
        assert scheduler.pending() == 0
    finally:
        scheduler.stop()


def test_blocking_calls_use_at_most_the_pool_and_do_not_hold_up_others() -> None:
    scheduler = Scheduler("test-pool", workers=3).start()
    release = threading.Event()
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def blocking() -> None:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        release.wait(WAIT_S)
        with lock:
            running[0] -= 1

    recorder = _Recorder()
    try:
        for _ in range(2):
            scheduler.call_later(0, blocking)
        assert _wait_until(lambda: running[0] == 2)
        # Two workers are stuck; a third one still delivers the rest, in time.
        for n in range(5):
            scheduler.call_later(0.01 * n, recorder, n)
        assert _wait_until(lambda: recorder.count() == 5)
        for _ in range(4):
            scheduler.call_later(0, blocking)
        assert _wait_until(lambda: running[0] == 3)
        release.set()
        assert _wait_until(lambda: running[0] == 0 and scheduler.pending() == 0)
        assert running[1] == 3
        assert len(_threads_named("test-pool")) <= 1 + 3
    finally:
        release.set()
        scheduler.stop()


def test_negative_workers_are_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        Scheduler(workers=-1)


def test_standin_state_keeps_many_covers_pending_without_threads() -> None:
    state = StandinState(StandinConfig(rate_limit=None, cover_seconds=3600, credits=1e9))
    state.start_callbacks()
    finished = _Recorder()
    try:
        threads_before = threading.active_count()
        for n in range(20_000):
            outcome = state.accept_generate("key", f"music-{n}", "http://127.0.0.1:9/cb",
                                            lambda cover_id, epoch: finished(cover_id))
            assert isinstance(outcome, Accepted)
        assert state.pending_callbacks() == 20_000
        # A thread per cover would be 20,000 more; other tests' threads may come and go.
        assert threading.active_count() < threads_before + 100
        state.reset()
        assert state.pending_callbacks() == 0
    finally:
        state.cancel_callbacks()
    assert finished.count() == 0


def test_standin_state_finishes_covers_when_due_and_not_after_stop() -> None:
    state = StandinState(StandinConfig(rate_limit=None, cover_seconds=0.05, credits=1e9))
    state.start_callbacks()
    finished = _Recorder()
    try:
        ids = []
        for n in range(50):
            outcome = state.accept_generate("key", f"music-{n}", "http://127.0.0.1:9/cb",
                                            lambda cover_id, epoch: finished(cover_id))
            assert isinstance(outcome, Accepted)
            ids.append(outcome.cover_id)
        assert _wait_until(lambda: finished.count() == 50)
        assert sorted(finished.calls) == sorted(ids)  # type: ignore[type-var]
        assert state.pending_callbacks() == 0
    finally:
        state.cancel_callbacks()
