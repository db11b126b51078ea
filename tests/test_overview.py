"""The cluster overview and the indexes it counts from, in process, against real Redis.

Fast layer: the job scripts keep one state index entry per job and one wait index
entry per waiting job, in the same step as each change; `read_overview` counts
them without scanning job keys; endings are counted by the finish script once.
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
from kie_covers.store import counters
from kie_covers.store.credits import record_check
from kie_covers.store.fair import GENERATE_LIMITER, FairLimiter
from kie_covers.store.jobs import JobStore, Lifetimes
from kie_covers.store.limiter import Place, RateLimiter
from kie_covers.store.liveness import Liveness, holder_id
from kie_covers.store.overview import RECENT_SLOTS, LimiterSpec, SlotShares, read_overview
from kie_covers.store.reindex import index_existing
from kie_covers.store.run import Run
from tests.conftest import STORE_DB, empty_db

CALLBACK = "http://127.0.0.1:9/cb"
RESULT_TTL_S, FAILURE_TTL_S = 60, 120


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with empty_db(redis_server, STORE_DB) as conn:
        yield conn


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, Lifetimes(result_ttl_s=RESULT_TTL_S, failure_ttl_s=FAILURE_TTL_S,
                                      retry_base_s=5, retry_max_delay_s=40))


def new_job(store: JobStore, music_task_id: str | None = None) -> str:
    job_id, created = store.enqueue(str(uuid.uuid4()), music_task_id or uuid.uuid4().hex,
                                    CALLBACK, 30, "q")
    assert created
    return job_id


def run_of(store: JobStore, job_id: str) -> Run:
    job = store.get(job_id)
    assert job is not None
    run = store.begin(job_id, job.music_task_id, job.callback_url, 30, "q")
    assert isinstance(run, Run)
    return run


def indexed(client: redis.Redis, job_id: str) -> tuple[list[str], list[str]]:
    """(states, wait reasons) whose index holds `job_id`."""
    states = [s.value for s in JobState
              if client.zscore(keys.state_index(s.value), job_id) is not None]
    reasons = [r.value for r in WaitReason
               if client.zscore(keys.waiting(r.value), job_id) is not None]
    return states, reasons


def overview_of(client: redis.Redis, now: float | None = None) -> dict[str, object]:
    return read_overview(client, dead_after_s=5, now=now).to_dict()


def test_a_job_through_every_transition_is_in_exactly_one_state_index(
        store: JobStore, client: redis.Redis) -> None:
    job_id = new_job(store)
    assert indexed(client, job_id) == (["queued"], [])
    run_of(store, job_id).wait(1, wait_reason=WaitReason.RATE_SLOT)
    assert indexed(client, job_id) == (["queued"], ["rate_slot"])
    since = client.zscore(keys.waiting("rate_slot"), job_id)
    time.sleep(0.01)
    run_of(store, job_id).wait(1, wait_reason=WaitReason.RATE_SLOT)  # the same wait goes on
    assert client.zscore(keys.waiting("rate_slot"), job_id) == since
    run_of(store, job_id).wait(1, wait_reason=WaitReason.UPSTREAM, retries=1)
    assert indexed(client, job_id) == (["queued"], ["upstream"])
    assert run_of(store, job_id).submitted("cover-1", 30).changed
    assert indexed(client, job_id) == (["submitted"], [])
    run_of(store, job_id).wait(1, wait_reason=WaitReason.UPSTREAM)
    assert indexed(client, job_id) == (["submitted"], ["upstream"])
    run_of(store, job_id).wait(1, wait_reason=None)  # a poll's wait is no held wait
    assert indexed(client, job_id) == (["submitted"], [])
    run_of(store, job_id).wait(1, wait_reason=WaitReason.UPSTREAM)
    assert store.finish(job_id, error=errors.UpstreamError("boom", 502)) is not None
    assert indexed(client, job_id) == (["failed"], [])
    assert store.finish(job_id, images=["x"]) is None  # ended once: nothing moves
    assert indexed(client, job_id) == (["failed"], [])
    assert store.failures.requeue(job_id, 30) == "ok"
    assert indexed(client, job_id) == (["queued"], [])
    assert run_of(store, job_id).submitted("cover-2", 30).changed
    ended = store.finish_by_cover("cover-2", "{}", 60, images=["x"], job_id=job_id)
    assert ended is not None and not isinstance(ended, str)  # a callback ends it
    assert indexed(client, job_id) == (["succeeded"], [])


def test_forget_takes_a_failed_job_out_of_every_index(store: JobStore,
                                                      client: redis.Redis) -> None:
    job_id = new_job(store)
    run_of(store, job_id).wait(1, wait_reason=WaitReason.MAINTENANCE)
    failed = store.finish(job_id, error=errors.NotFound("gone", 404))
    assert failed is not None and indexed(client, job_id) == (["failed"], [])
    store.failures.forget(failed)
    assert indexed(client, job_id) == ([], [])
    assert overview_of(client)["jobs"] == {"queued": 0, "submitted": 0, "succeeded": 0,
                                           "failed": 0}


def test_a_raw_message_job_and_a_refused_one_are_indexed(store: JobStore,
                                                         client: redis.Redis) -> None:
    raw = str(uuid.uuid4())
    run = store.begin(raw, uuid.uuid4().hex, CALLBACK, 30, "q")
    assert isinstance(run, Run) and indexed(client, raw) == (["queued"], [])
    refused = str(uuid.uuid4())
    assert store.record_rejected(refused, errors.InvalidPayload("bad")) is not None
    assert indexed(client, refused) == (["failed"], [])


def test_the_overview_counts_states_waits_and_oldest_ages(store: JobStore,
                                                          client: redis.Redis) -> None:
    queued = [new_job(store) for _ in range(4)]
    started = time.time()
    run_of(store, queued[0]).wait(1, wait_reason=WaitReason.RATE_SLOT)
    run_of(store, queued[1]).wait(1, wait_reason=WaitReason.RATE_SLOT)
    run_of(store, queued[2]).wait(1, wait_reason=WaitReason.MAINTENANCE)
    waits_set = time.time()
    assert run_of(store, queued[3]).submitted("c3", 30).changed
    done = [new_job(store) for _ in range(3)]
    assert store.finish(done[0], images=["x"]) is not None
    assert store.finish(done[1], images=["x"]) is not None
    assert store.finish(done[2], error=errors.NotFound("gone", 404)) is not None
    view = read_overview(client, dead_after_s=5, now=started + 2)
    assert dict(view.jobs) == {JobState.QUEUED: 3, JobState.SUBMITTED: 1,
                               JobState.SUCCEEDED: 2, JobState.FAILED: 1}
    assert view.waiting[WaitReason.RATE_SLOT].count == 2
    assert view.waiting[WaitReason.MAINTENANCE].count == 1
    assert view.waiting[WaitReason.UPSTREAM].count == 0
    assert view.waiting[WaitReason.UPSTREAM].oldest_age_s is None
    age = view.waiting[WaitReason.RATE_SLOT].oldest_age_s
    # Since the first wait began (stored in whole ms)
    assert age is not None and started + 2 - waits_set <= age <= 2.001
    queued_age = view.oldest_age_s[JobState.QUEUED]
    assert queued_age is not None and queued_age >= 2.0
    assert view.due_jobs == 4  # every live job, none of the ended ones
    # Ended records are counted until they expire, then no more
    later = read_overview(client, dead_after_s=5, now=time.time() + RESULT_TTL_S + 1)
    assert later.jobs[JobState.SUCCEEDED] == 0 and later.jobs[JobState.FAILED] == 1
    gone = read_overview(client, dead_after_s=5, now=time.time() + FAILURE_TTL_S + 1)
    assert gone.jobs[JobState.FAILED] == 0 and gone.jobs[JobState.QUEUED] == 3


def test_each_ending_is_counted_once_by_the_finish_script(store: JobStore,
                                                          client: redis.Redis) -> None:
    ok, bad = new_job(store), new_job(store)
    assert store.finish(ok, images=["x"]) is not None
    assert store.finish(ok, images=["x"]) is None
    assert store.finish(bad, error=errors.NotFound("gone", 404)) is not None
    assert store.finish(bad, error=errors.NotFound("gone", 404)) is None
    counts = client.hgetall(keys.METRIC_COUNTERS)
    assert counts == {counters.ended_field("succeeded", ""): "1",
                      counters.ended_field("failed", "not_found"): "1"}
    histogram = client.hgetall(keys.metric_histogram(counters.JOB_DURATION))
    assert histogram["count"] == "2" and histogram["le=3600"] == "2"
    assert 0.0 <= float(histogram["sum"]) < 60


def test_the_overview_reads_limiters_pause_credits_and_live_workers(
        client: redis.Redis) -> None:
    limiter = RateLimiter(client, "generate", 5, 10, gate_on_credits=True)
    for n in range(3):
        assert limiter.acquire(f"job-{n}").go
    assert limiter.pause_all(30, WaitReason.MAINTENANCE)
    assert limiter.hold_credits(WaitReason.DAILY_CAP)
    record_check(client, 0.0, now=1_700_000_000.5)
    client.rpush(keys.QUARANTINE, "m1", "m2")
    now = time.time()
    seconds, micros = client.time()
    redis_ms = seconds * 1000 + micros // 1000
    # Two live workers' main and pool processes, one worker silent too long
    client.zadd(keys.BEATS, {holder_id("w1@host", "worker"): redis_ms - 1000,
                             holder_id("w1@host", "pool"): redis_ms - 1000,
                             holder_id("w3@host", "worker"): redis_ms - 4000,
                             holder_id("w2@host", "worker"): redis_ms - 30_000})
    spec = LimiterSpec("generate", 5, limiter.window_ms / 1000)
    view = read_overview(client, [spec], dead_after_s=5, now=now)
    assert [(u.name, u.granted, u.limit) for u in view.limiters] == [("generate", 3, 5)]
    assert view.pause is not None and view.pause.reason is WaitReason.MAINTENANCE
    assert 25 < view.pause.left_s <= 30
    assert view.credits.held is WaitReason.DAILY_CAP
    check = view.credits.last_check
    assert check is not None and check.at == 1_700_000_000.5 and check.left == 0.0
    assert view.quarantined == 2 and view.workers == ("w1@host", "w3@host")
    # Once the window has passed, the calls no longer count
    assert read_overview(client, [spec], dead_after_s=5, now=now + 11).limiters[0].granted == 0


def test_the_overview_shows_who_got_the_latest_generate_slots(client: redis.Redis) -> None:
    assert read_overview(client, dead_after_s=5).recent_slots == SlotShares(
        0, {"interactive": 0, "bulk": 0}, ())
    fair = FairLimiter(client, GENERATE_LIMITER, 200, 60, margin_s=0.0)
    lots = [("bulk", "acme")] * 120 + [("interactive", None)] * 3 + [("bulk", "globex")] * 2
    for n, (lane, tenant) in enumerate(lots):
        job = f"j{n}"
        client.hset(keys.job(job), mapping={"job_id": job, "state": "queued"})
        assert fair.acquire(job, place=Place(lane, tenant)).go
    shares = read_overview(client, dead_after_s=5).recent_slots
    # The latest 100 slots only: 95 of acme's, then 3 interactive, 2 of globex's
    assert shares.count == RECENT_SLOTS == 100
    assert dict(shares.lanes) == {"interactive": 3, "bulk": 97}
    assert shares.tenants == (("acme", 95), (None, 3), ("globex", 2))
    shown = read_overview(client, dead_after_s=5).to_dict()["recent_slots"]
    assert shown["tenants"][1] == {"tenant": None, "slots": 3}


def test_a_worker_that_stops_cleanly_leaves_the_live_set(client: redis.Redis) -> None:
    liveness = Liveness(client, dead_after_s=5)
    main, pool = holder_id("w@host", "worker"), holder_id("w@host", "pool")
    assert liveness.beat(main) and liveness.beat(pool)
    assert read_overview(client, dead_after_s=5).workers == ("w@host",)
    assert liveness.live_nodes() == ["w@host"]
    liveness.leave(main)
    assert read_overview(client, dead_after_s=5).workers == ()
    assert liveness.live_nodes() == []


def test_jobs_recorded_before_the_indexes_are_indexed_once(store: JobStore,
                                                         client: redis.Redis) -> None:
    queued, waiting, submitted, ended = (new_job(store) for _ in range(4))
    run_of(store, waiting).wait(1, wait_reason=WaitReason.DAILY_CAP)
    assert run_of(store, submitted).submitted("c", 30).changed
    assert store.finish(ended, error=errors.NotFound("gone", 404)) is not None
    at = time.time()
    expected = overview_of(client, now=at)
    # As an older version left them: records, and no index at all
    client.delete(*[keys.state_index(s.value) for s in JobState],
                  *[keys.waiting(r.value) for r in WaitReason])
    assert overview_of(client)["jobs"] == {s.value: 0 for s in JobState}
    assert index_existing(client) == 4
    again = overview_of(client, now=at)
    # The same counts, and the wait's start as its record says (updated_at)
    assert again["jobs"] == expected["jobs"] and again["waiting"] == expected["waiting"]
    assert [indexed(client, j)[0] for j in (queued, waiting, submitted, ended)] == \
        [["queued"], ["queued"], ["submitted"], ["failed"]]
    assert index_existing(client) is None  # done once per cluster
    assert index_existing(client, force=True) == 0  # and nothing is indexed twice
    # An indexed ended record still stops counting when it expires
    later = read_overview(client, dead_after_s=5, now=time.time() + FAILURE_TTL_S + 1)
    assert later.jobs[JobState.FAILED] == 0
