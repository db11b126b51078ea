"""Outcome notices in process (`kie_covers.services.notify`) against the suite's Redis.

The apps are real servers on loopback (`tests.notice_apps`). A second thread plays
"another worker": it claims due notices from the due set and tries them, as a
worker's dispatcher and its ``covers.notify_app`` tasks do.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from kie_covers.config import get_settings, keys
from kie_covers.core import errors
from kie_covers.runtime.connections import get_limiters, get_redis, get_store, redis_url
from kie_covers.services import notify
from kie_covers.standin import KieStandin
from kie_covers.store.due import Due
from kie_covers.store.jobs import JobStore
from kie_covers.store.record import Job
from tests.conftest import NOTICE_DB
from tests.notice_apps import SLOW_ANSWER, FastApp, SlowApp

# Real apps on loopback answering slowly, timed against the notice caps: seconds each.
pytestmark = pytest.mark.e2e

#: A queue no worker reads: only this module's threads deliver these notices.
QUEUE = "covers-notice-tests-nobody"

Configure = Callable[..., JobStore]


@pytest.fixture
def configure(standin: KieStandin) -> Iterator[Configure]:
    """Factory: set notice settings for this process (env overrides), return its store.

    Redis is emptied first (`standin`); settings, the store and the sender threads are
    made anew from the environment, and again from the old one afterwards.
    """
    saved = dict(os.environ)
    # A Redis database of its own: the session's workers dispatch from the due sets of
    # database 0, and one that claimed a notice here would lease it for seconds.
    own_db = saved["REDIS_URL"].rsplit("/", 1)[0] + f"/{NOTICE_DB}"
    redis.Redis.from_url(own_db).flushdb()

    def reset() -> None:
        get_settings.cache_clear()
        for cached in (redis_url, get_redis, get_limiters, get_store, notify._senders):
            cached.reset()

    def apply(**overrides: str) -> JobStore:
        os.environ.update({"REDIS_URL": own_db, **overrides})
        reset()
        return get_store()

    yield apply
    os.environ.clear()
    os.environ.update(saved)
    reset()


class OtherWorker:
    """A thread that sends due notices as another worker would (claim, then deliver)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.results: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for job_id, _queue in self.store.due.claim(lease_s=2.0, limit=100).notices:
                self.results.append((job_id, notify.deliver(job_id)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def ended_job(store: JobStore, url: str, error: errors.CoverError | None = None) -> Job:
    """A job for `url` that has just ended (its notice lock taken for this process)."""
    job_id, _ = store.enqueue(str(uuid.uuid4()), uuid.uuid4().hex, url, 600, QUEUE)
    if error is None:
        ended = store.finish(job_id, images=["https://cdn.example/a.png"])
    else:
        ended = store.finish(job_id, error=error)
    assert ended is not None and ended.notice_locked
    return ended


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_slow_app_gets_one_notice_and_does_not_delay_a_fast_app(
    configure: Configure,
) -> None:
    # Given 1 s notice caps (the lock lasts 3 s, the due set's lease 8 s), no retry
    # after the first failed try, an app that answers a byte a second and a fast app
    store = configure(COVERS_NOTIFY_TIMEOUT="1", COVERS_NOTIFY_MAX_AGE="0.5")
    slow, fast = SlowApp(interval_s=1.0), FastApp()
    other = OtherWorker(store)
    try:
        slow_job, fast_job = ended_job(store, slow.url), ended_job(store, fast.url)
        ended_at = time.monotonic()
        # When both notices go to this process's senders, the slow one first
        notify.deliver_soon(slow_job)
        notify.deliver_soon(fast_job)
        # Then the fast app has its notice at once, while the slow one is still answering
        wait_for(lambda: fast.received, 10, "the fast app's notice")
        wait_for(lambda: slow.received, 10, "the slow app's notice")
        # (order, not the clock: the fast notice was answered before the slow try ended)
        fast_end, slow_end = fast.received[0].ended, slow.received[0].ended
        assert fast_end is not None and (slow_end is None or fast_end <= slow_end)
        # And the slow try is cut at the cap, a failed try (given up: no more tries here):
        # at a byte a second, a 1 s cap lets at most two bytes of the answer through
        wait_for(lambda: slow.received[0].ended is not None, 10, "the slow try to end")
        assert slow.received[0].answered_bytes <= 2 < len(SLOW_ANSWER)
        # While another worker claims the due set past the lock's end and the lease
        time.sleep(max(0.0, ended_at + 8 + 1.5 - time.monotonic()))
        # The slow app got exactly one notice: nobody sent it again
        assert len(slow.received) == 1
        assert all(result in ("busy", "nothing") for _, result in other.results)
        record = store.get(slow_job.job_id)
        assert record is not None and record.notified_at is None
        assert record.notice_error is not None and "TimeoutError" in record.notice_error
        assert record.notice_attempts == 1
        done = store.get(fast_job.job_id)
        assert done is not None and done.notified_at is not None
        assert len(fast.received) == 1
        # Each notice names itself
        assert slow.received[0].notice_id == f"{slow_job.job_id}:0"
        assert fast.received[0].notice_id == f"{fast_job.job_id}:0"
    finally:
        other.stop()
        slow.stop()
        fast.stop()


def test_the_notice_id_is_stable_across_tries_and_new_after_a_retried_job_ends_again(
    configure: Configure,
) -> None:
    # Given an app that refuses the first two tries
    store = configure(COVERS_NOTIFY_TIMEOUT="1", COVERS_NOTIFY_MAX_AGE="30")
    app = FastApp(statuses=[503, 503])
    other = OtherWorker(store)
    try:
        job = ended_job(store, app.url, errors.UpstreamError("Kie had a fault", 500))
        notify.deliver_soon(job)
        wait_for(lambda: (store.get(job.job_id) or job).notified_at is not None, 30,
                 "the notice to be delivered")
        # Then every try carried the same id
        assert [r.notice_id for r in app.received] == [f"{job.job_id}:0"] * 3
        # When the failed job is retried and ends again, its new notice has a new id
        assert store.failures.requeue(job.job_id, 60) == "ok"
        again = store.finish(job.job_id, images=["https://cdn.example/b.png"])
        assert again is not None and again.notice_locked
        notify.deliver_soon(again)
        wait_for(lambda: len(app.received) == 4, 30, "the second ending's notice")
        assert app.received[3].notice_id == f"{job.job_id}:1"
        assert b"b.png" in app.received[3].body
    finally:
        other.stop()
        app.stop()


def test_a_notice_to_a_refused_address_is_recorded_and_not_retried(
    configure: Configure,
) -> None:
    # Given private targets are not allowed, and an app on 127.0.0.2
    store = configure(COVERS_ALLOW_PRIVATE_TARGETS="0", COVERS_NOTIFY_TIMEOUT="1",
                      COVERS_NOTIFY_MAX_AGE="60")
    app = FastApp("127.0.0.2")
    other = OtherWorker(store)
    try:
        job = ended_job(store, app.url)
        notify.deliver_soon(job)
        # Then the notice is given up at once, with the reason, out of the due set
        wait_for(lambda: (store.get(job.job_id) or job).notice_error is not None, 30,
                 "the refusal to be recorded")
        record = store.get(job.job_id)
        assert record is not None and record.notice_error is not None
        assert "target refused" in record.notice_error
        assert "127.0.0.2 is a loopback address" in record.notice_error
        assert store.redis.zscore(Due.NOTICES.key, job.job_id) is None
        # And it is never tried again, nor did anything reach the app
        time.sleep(1.5)
        record = store.get(job.job_id)
        assert record is not None and record.notice_attempts == 1
        assert record.notified_at is None
        assert app.log.connections == 0
        assert store.redis.get(keys.notify_lock(job.job_id)) is None
    finally:
        other.stop()
        app.stop()


def test_a_try_runs_under_its_lock_and_keeps_the_due_set_from_handing_it_on(
    configure: Configure,
) -> None:
    # Given a notice whose process died with its lock taken at the job's end
    store = configure(COVERS_NOTIFY_TIMEOUT="1", COVERS_NOTIFY_MAX_AGE="0.5")
    slow = SlowApp(interval_s=1.0)
    try:
        job = ended_job(store, slow.url)
        store.redis.delete(keys.notify_lock(job.job_id))  # ... and its lock has expired
        # When a worker begins it (the task's path) against the slow app
        before = time.time()
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(notify.deliver(job.job_id)))
        thread.start()
        wait_for(lambda: slow.received, 10, "the notice")
        # Then the due set's entry is moved past the lock's end (lock 3 s + 5 s) and
        # nobody else may begin it meanwhile
        score = store.redis.zscore(Due.NOTICES.key, job.job_id)
        assert score is not None and score / 1000 >= before + 8 - 0.1
        assert notify.deliver(job.job_id) == "busy"
        assert store.due.claim(lease_s=2.0).notices == []
        thread.join(5)
        assert result == ["gave_up"] and len(slow.received) == 1
        # And the lock is released by its own token once the try is over
        assert store.redis.get(keys.notify_lock(job.job_id)) is None
    finally:
        slow.stop()


def test_notices_beyond_the_origin_cap_go_to_the_due_set_at_once(
    configure: Configure, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given one sender thread per process at most, busy with a slow app
    monkeypatch.setattr(notify, "MAX_ORIGINS", 1)
    monkeypatch.setattr(notify, "IDLE_S", 0.5)
    store = configure(COVERS_NOTIFY_TIMEOUT="1", COVERS_NOTIFY_MAX_AGE="0.5")
    slow, fast = SlowApp(interval_s=1.0), FastApp()
    try:
        notify.deliver_soon(ended_job(store, slow.url))
        wait_for(lambda: slow.received, 10, "the slow app's notice")
        # When a notice for another origin ends here
        job = ended_job(store, fast.url)
        notify.deliver_soon(job)
        # Then it is due at once, its lock free for any worker
        score = store.redis.zscore(Due.NOTICES.key, job.job_id)
        assert score is not None and score / 1000 <= time.time() + 0.1
        assert store.redis.get(keys.notify_lock(job.job_id)) is None
        assert notify.deliver(job.job_id) == "delivered"
        assert fast.received[0].notice_id == f"{job.job_id}:0"
        # And an idle sender thread ends, freeing its slot
        wait_for(lambda: not notify._senders().origins(), 30, "the idle thread to end")
    finally:
        slow.stop()
        fast.stop()
