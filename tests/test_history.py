"""Jobs' timelines (`kie_covers.store.history`): the store in process, then what a real
worker, the retry and forget paths write."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.config import keys
from kie_covers.core.errors import NotFound
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.services.failures import forget_jobs, retry_jobs
from kie_covers.standin import KieStandin
from kie_covers.store.history import MAX_TEXT, History, event
from kie_covers.store.jobs import JobStore, Lifetimes
from tests.conftest import STORE_DB, empty_db, unreachable_redis
from tests.services import StartWorker, WorkerProcess, wait_until

APP_CALLBACK = "http://127.0.0.1:9/app-callback"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with empty_db(redis_server, STORE_DB) as conn:
        yield conn


def test_entries_are_kept_oldest_first_capped_and_expiring(client: redis.Redis) -> None:
    history = History(client, ttl_s=120, cap=5)
    for n in range(8):
        history.add("j1", event("poll", n=n, kind=None))
    entries = history.read("j1")
    # Only the newest 5 are kept, oldest first; None fields are left out.
    assert [e["n"] for e in entries] == [3, 4, 5, 6, 7]
    assert all(e["event"] == "poll" and "kind" not in e for e in entries)
    assert 0 < client.pttl(keys.history("j1")) <= 120_000
    # An ending gives the timeline its record's lifetime.
    history.add("j1", event("succeeded", images=2), ttl_s=60)
    assert 0 < client.pttl(keys.history("j1")) <= 60_000
    history.forget("j1")
    assert history.read("j1") == [] and not client.exists(keys.history("j1"))


def test_an_entry_holds_its_time_in_ms_and_short_texts() -> None:
    entry = event("failed", 1700000000.5, kind="upstream", message="x" * 1000)
    assert entry["at"] == 1700000000500 and entry["event"] == "failed"
    assert len(entry["message"]) == MAX_TEXT


def test_a_write_to_an_unreachable_redis_is_dropped_not_raised() -> None:
    # Nothing listens on this loopback port: the write is lost, the caller goes on.
    History(unreachable_redis(decode_responses=True), ttl_s=60).add("j1", event("poll", n=1))


def test_forgetting_a_failed_job_deletes_its_timeline(client: redis.Redis) -> None:
    store = JobStore(client, Lifetimes(result_ttl_s=60, failure_ttl_s=120))
    job_id, _ = store.enqueue(uuid.uuid4().hex, "music-x", APP_CALLBACK, 30, "q")
    store.history.add(job_id, event("enqueued"))
    failed = store.finish(job_id, error=NotFound("gone", 404))
    assert failed is not None
    store.failures.forget(failed)
    assert not client.exists(keys.history(job_id))


def endings(events: list[dict[str, object]]) -> list[object]:
    return [e["event"] for e in events if e["event"] in ("succeeded", "failed")]


def settled(job_id: str, ends: int = 1) -> list[dict[str, object]]:
    """The job's timeline once its `ends`-th ending and the app's notice try after it are
    on it: the process that ended the job writes both just after the state changes (the
    notice from a thread), so they may come a moment after `wait_for_cover` returns."""
    def written() -> bool:
        names = [e["event"] for e in get_store().history.read(job_id)]
        ended_at = [n for n, name in enumerate(names) if name in ("succeeded", "failed")]
        return len(ended_at) >= ends and "notice" in names[ended_at[-1]:]

    wait_until(written, 10, 0.05, f"the ending and notice of job {job_id} on its timeline")
    return get_store().history.read(job_id)


@pytest.mark.e2e
def test_a_worker_writes_attempts_waits_polls_and_the_ending(
    standin: KieStandin, worker: WorkerProcess, start_worker: StartWorker
) -> None:
    # One 500 on the generate: an attempt that failed, a wait, then submit, polls, end.
    standin.inject("generate", "500", times=1)
    job_id = enqueue_cover("hist" + uuid.uuid4().hex, APP_CALLBACK)
    assert wait_for_cover(job_id, timeout_s=30)["state"] == "succeeded"
    # The app's notice (to a port nobody listens on) is tried after the ending.
    timeline = settled(job_id)
    names = [e["event"] for e in timeline]
    assert names[0] == "enqueued"
    assert names[1:3] == ["attempt", "wait"]
    assert names.index("enqueued") < names.index("submitted") < names.index("succeeded")
    assert names.index("succeeded") < names.index("notice")
    attempt = timeline[1]
    assert attempt["kind"] == "upstream" and attempt["n"] == 1
    # A failure, retried by hand, and forgotten.
    failing = start_worker(COVERS_MAX_ATTEMPTS="1")
    standin.inject("generate", "500", times=1)
    broken = enqueue_cover("hist" + uuid.uuid4().hex, APP_CALLBACK, queue=failing.queue)
    assert wait_for_cover(broken, timeout_s=30)["state"] == "failed"
    assert endings(settled(broken)) == ["failed"]
    assert retry_jobs([broken], by="console")[0].result == "ok"
    assert wait_for_cover(broken, timeout_s=30)["state"] == "succeeded"
    events = settled(broken, ends=2)
    retried = next(e for e in events if e["event"] == "retried")
    assert retried["by"] == "console" and retried["round"] == 1
    assert endings(events) == ["failed", "succeeded"]
    assert get_cover(broken)["retry_rounds"] == 1
    standin.inject("generate", "404", times=1)
    gone = enqueue_cover("hist" + uuid.uuid4().hex, APP_CALLBACK, queue=failing.queue)
    assert wait_for_cover(gone, timeout_s=30)["state"] == "failed"
    assert settled(gone)  # (written before the forget, not after it)
    assert forget_jobs([gone]) == 1
    assert get_store().history.read(gone) == []
