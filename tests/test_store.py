"""The job store and its Lua scripts, in process, against the suite's real Redis.

Fast layer: no worker, no web process, no Kie. Each test gets an empty Redis
database of its own number, so the end-to-end tests' workers never see these
keys.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from kie_covers.config import keys
from kie_covers.core import errors
from kie_covers.core.states import JobState, WaitReason
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.store.due import Due
from kie_covers.store.history import event
from kie_covers.store.jobs import Counter, JobStore, Lifetimes
from kie_covers.store.locks import TokenLock
from kie_covers.store.run import Busy, Ended, Run
from tests.conftest import STORE_DB, empty_db

CALLBACK = "http://127.0.0.1:9/cb"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an emptied database of the suite's Redis, this module's own."""
    with empty_db(redis_server, STORE_DB) as conn:
        yield conn


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    """A job store with short lifetimes and app notices on."""
    return JobStore(client, Lifetimes(result_ttl_s=60, failure_ttl_s=120, retry_base_s=5,
                                      retry_max_delay_s=40, notice_lease_s=3,
                                      notice_lock_s=2))


def new_job(store: JobStore, music_task_id: str | None = None) -> str:
    job_id, created = store.enqueue(str(uuid.uuid4()), music_task_id or uuid.uuid4().hex,
                                    CALLBACK, 30, "q")
    assert created
    return job_id


def begin(store: JobStore, job_id: str) -> Run | Ended | Busy:
    job = store.get(job_id)
    assert job is not None
    return store.begin(job_id, job.music_task_id, job.callback_url, 30, "q")


def score(client: redis.Redis, which: Due, job_id: str) -> float | None:
    value = client.zscore(which.key, job_id)
    return None if value is None else float(value)


def test_enqueue_is_idempotent_per_music_task_until_the_job_fails(store: JobStore) -> None:
    music = uuid.uuid4().hex
    first = new_job(store, music)
    # While the job lives, the same music task gets the same job back
    assert store.enqueue(str(uuid.uuid4()), music, CALLBACK, 30, "q") == (first, False)
    record = store.get(first)
    assert record is not None and record.state is JobState.QUEUED
    assert record.music_task_id == music and record.queue == "q"
    # Once it failed, a new job is made
    assert store.finish(first, error=errors.NotFound("gone", 404)) is not None
    second, created = store.enqueue(str(uuid.uuid4()), music, CALLBACK, 30, "q")
    assert created and second != first


def test_a_run_holds_its_job_until_it_takes_an_exit(store: JobStore, client: redis.Redis
                                                    ) -> None:
    job_id = new_job(store)
    run = begin(store, job_id)
    assert isinstance(run, Run)
    # A second copy of the message finds the job busy
    assert isinstance(begin(store, job_id), Busy)
    # Waiting releases the lock, sets the fields and the due time
    before = time.time()
    run.wait(5, wait_reason=WaitReason.RATE_SLOT, retries=1)
    assert not run.open and client.get(keys.lock(job_id)) is None
    record = store.get(job_id)
    assert record is not None and record.wait_reason is WaitReason.RATE_SLOT
    assert record.retries == 1
    due = score(client, Due.JOBS, job_id)
    assert due is not None and due >= int((before + 5) * 1000)
    # So the next run may begin
    assert isinstance(begin(store, job_id), Run)


def test_a_runs_exit_notes_the_step_on_the_timeline_in_its_own_script(
    store: JobStore, client: redis.Redis
) -> None:
    def timeline(job_id: str) -> list[object]:
        return [(e["event"], e.get("n")) for e in store.history.read(job_id)]

    job_id = new_job(store)
    run = begin(store, job_id)
    assert isinstance(run, Run)
    run.wait(1, wait_reason=WaitReason.UPSTREAM, retries=1,
             timeline=[event("attempt", n=1, kind="upstream"), event("wait", reason="x")])
    assert timeline(job_id) == [("attempt", 1), ("wait", None)]
    assert 0 < client.pttl(keys.history(job_id)) <= 120_000  # the longer record lifetime
    record = store.get(job_id)
    assert record is not None and record.retries == 1 and client.get(keys.lock(job_id)) is None
    # A wait with nothing to note leaves the timeline as it is
    run = begin(store, job_id)
    assert isinstance(run, Run)
    run.wait(1, wait_reason=WaitReason.UPSTREAM)
    assert len(timeline(job_id)) == 2
    # The submit is noted when it is recorded, and only then
    run = begin(store, job_id)
    assert isinstance(run, Run)
    assert run.submitted("cover-t", 30, timeline=[event("submitted", n=2)]).changed
    assert timeline(job_id)[-1] == ("submitted", 2)
    run = begin(store, job_id)
    assert isinstance(run, Run)
    assert not run.submitted("cover-t", 30, timeline=[event("submitted", n=3)]).changed
    run.wait(30, timeline=[event("poll", n=1)])
    assert timeline(job_id)[-2:] == [("submitted", 2), ("poll", 1)]


def test_a_run_that_raises_gives_its_lock_back_at_once(store: JobStore, client: redis.Redis
                                                       ) -> None:
    job_id = new_job(store)
    run = begin(store, job_id)
    assert isinstance(run, Run)
    with pytest.raises(RuntimeError), run:
        assert client.get(keys.lock(job_id)) == run.token
        raise RuntimeError("a bug in a step")
    assert client.get(keys.lock(job_id)) is None
    assert isinstance(begin(store, job_id), Run)


def test_submitted_records_the_cover_and_an_ended_job_is_ended(store: JobStore,
                                                               client: redis.Redis) -> None:
    job_id = new_job(store)
    run = begin(store, job_id)
    assert isinstance(run, Run)
    recorded = run.submitted("cover-1", 30)
    assert recorded == (True, None) and not run.open
    assert client.get(keys.cover("cover-1")) == job_id
    record = store.get(job_id)
    assert record is not None and record.state is JobState.SUBMITTED
    assert record.cover_task_id == "cover-1" and record.submitted_at is not None
    # A poll run ends it; the next message only reads the outcome
    run = begin(store, job_id)
    assert isinstance(run, Run)
    ended = run.finish(images=["http://127.0.0.1:9/a.png"])
    assert ended is not None and ended.state is JobState.SUCCEEDED
    assert ended.notice_locked  # the ender delivers the app's notice
    assert score(client, Due.NOTICES, job_id) is not None
    assert score(client, Due.JOBS, job_id) is None
    again = begin(store, job_id)
    assert isinstance(again, Ended) and again.job.images == ["http://127.0.0.1:9/a.png"]
    # Ending twice does nothing
    assert store.finish(job_id, error=errors.UpstreamError("late")) is None


def test_a_callback_before_the_submit_is_kept_for_it(store: JobStore) -> None:
    job_id = new_job(store)
    body = '{"code": 200}'
    assert store.finish_by_cover("early-cover", body, 60, images=["x"]) == "unknown"
    run = begin(store, job_id)
    assert isinstance(run, Run)
    recorded = run.submitted("early-cover", 30)
    assert recorded == (True, body) and run.open  # still held: it goes on to end the job
    assert run.finish(images=["x"]) is not None
    assert store.finish_by_cover("early-cover", body, 60, images=["x"]) is None  # duplicate


def test_a_failure_is_indexed_scheduled_retried_and_forgotten(store: JobStore,
                                                               client: redis.Redis) -> None:
    music = uuid.uuid4().hex
    job_id = new_job(store, music)
    failed = store.finish(job_id, error=errors.UpstreamError("boom", 502))
    assert failed is not None and failed.first_failed_at is not None
    assert store.failures.count() == 1 and store.failures.count("upstream") == 1
    assert store.failures.count(code=502) == 1 and store.failures.count("not_found") == 0
    assert [j.job_id for j in store.failures.newest()] == [job_id]
    retry_at = score(client, Due.JOBS, job_id)
    assert retry_at is None  # ended: out of the job due set
    assert client.zscore(keys.RETRY_DUE, job_id) is not None  # retryable: scheduled
    # Retrying resets the record and queues it again, once
    assert store.failures.requeue(job_id, 30) == "ok"
    assert store.failures.requeue(job_id, 30) == "not_failed"
    record = store.get(job_id)
    assert record is not None and record.state is JobState.QUEUED
    assert record.error is None and record.retry_rounds == 1 and record.faults == 0
    assert store.failures.count() == 0 and client.zscore(keys.RETRY_DUE, job_id) is None
    # Failed again, and its music task since got another live job: no retry (paid twice)
    assert store.finish(job_id, error=errors.UpstreamError("boom", 502)) is not None
    other, created = store.enqueue(str(uuid.uuid4()), music, CALLBACK, 30, "q")
    assert created and other != job_id
    assert store.failures.requeue(job_id, 30) == "superseded"
    # Forgetting removes the record and every index entry
    record = store.get(job_id)
    assert record is not None
    store.failures.forget(record)
    assert store.get(job_id) is None and store.failures.count() == 0
    assert store.failures.requeue(job_id, 30) == "unknown"


def test_the_dispatcher_claims_what_is_due_and_drops_ended_jobs(store: JobStore,
                                                                client: redis.Redis) -> None:
    due_now, later, ended = new_job(store), new_job(store), new_job(store)
    for job_id in (due_now, ended):
        client.zadd(Due.JOBS.key, {job_id: 0})
    store.due.later(Due.JOBS, later, 60)
    assert store.finish(ended, images=["x"]) is not None
    client.zadd(Due.JOBS.key, {ended: 0})  # a stale entry of an ended job
    store.due.later(Due.COPIES, ended, 0)
    claimed = store.due.claim(lease_s=10, limit=100)
    assert [job.job_id for job in claimed.jobs] == [due_now]
    assert claimed.jobs[0].callback_url == CALLBACK
    assert claimed.copies == [(ended, "q")]
    assert score(client, Due.JOBS, ended) is None  # dropped
    lease = score(client, Due.JOBS, due_now)
    assert lease is not None and lease > time.time() * 1000  # leased, not removed
    # Nothing is claimed twice within the lease
    assert store.due.claim(lease_s=10, limit=100).count == 0


def test_fetch_many_reads_records_in_order_and_some_fields_only(store: JobStore) -> None:
    ids = [new_job(store) for _ in range(3)]
    assert store.finish(ids[1], error=errors.Rejected("no", 422)) is not None
    jobs = store.fetch_many([*ids, "unknown-job"])
    assert [j.job_id if j else None for j in jobs] == [*ids, None]
    assert jobs[1] is not None and jobs[1].error is not None
    states = store.fetch_many(ids, fields=("state", "wait_reason"))
    assert [j.state if j else None for j in states] == [
        JobState.QUEUED, JobState.FAILED, JobState.QUEUED]
    assert all(j is not None and j.music_task_id == "" for j in states)  # not read


def test_update_and_counters_never_recreate_a_forgotten_record(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.count(job_id, Counter.NOTICE_ATTEMPTS) == 1
    assert store.update(job_id, images_refused={"u": "404"}, images_error=None)
    record = store.get(job_id)
    assert record is not None and record.images_refused == {"u": "404"}
    assert record.notice_attempts == 1
    store.redis.delete(keys.job(job_id))
    assert not store.update(job_id, images_error="late")
    assert store.get(job_id) is None


def test_a_raw_message_that_fails_validation_is_recorded_failed_once(store: JobStore) -> None:
    job_id = str(uuid.uuid4())
    error = errors.InvalidPayload("bad", detail={"fields": {"taskId": ["Missing."]}})
    ended = store.record_rejected(job_id, error)
    assert ended is not None and ended.state is JobState.FAILED
    assert ended.error is not None and ended.error["kind"] == "invalid_payload"
    assert store.record_rejected(job_id, error) is None
    assert store.failures.requeue(job_id, 30) == "invalid_payload"


def test_a_token_lock_is_released_only_by_its_taker(client: redis.Redis) -> None:
    mine = TokenLock(client, "covers:test-lock", 10)
    theirs = TokenLock(client, "covers:test-lock", 10)
    assert mine.take() and not theirs.take()
    theirs.release()
    assert client.get("covers:test-lock") == mine.token
    mine.release()
    assert theirs.take()


def test_an_early_callback_is_taken_only_by_the_job_its_url_named(store: JobStore) -> None:
    # A token for job A must not let its holder plant an ending for job B's cover
    planted_for, victim = new_job(store), new_job(store)
    body = '{"code": 200}'
    assert store.finish_by_cover("cover-b", body, 60, images=["x"],
                                 job_id=planted_for) == "unknown"
    run = begin(store, victim)
    assert isinstance(run, Run)
    recorded = run.submitted("cover-b", 30)
    assert recorded == (True, None) and not run.open  # not handed over; the run is done
    run = begin(store, planted_for)
    assert isinstance(run, Run)
    with run:
        assert run.submitted("cover-b", 30) == (True, body)  # its own job takes it


def test_counters_and_notice_marks_never_recreate_a_vanished_record(store: JobStore) -> None:
    job_id = new_job(store)
    store.redis.delete(keys.job(job_id))  # forgotten (or expired) while work was in flight
    assert store.count(job_id, Counter.NOTICE_ATTEMPTS) is None
    store.notices.delivered(job_id, "token")
    store.notices.gave_up(job_id, "late")
    assert not store.redis.exists(keys.job(job_id))
