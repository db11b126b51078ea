"""The liveness registry, its Lua hand-backs and the heartbeat, in process, on real Redis.

Fast layer: no worker process. A dead holder is made by writing an old heartbeat score
(what a killed process leaves behind); everything else goes through the code under test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu.exceptions import OperationalError

from kie_covers.config import keys
from kie_covers.config.settings import load_settings
from kie_covers.core.errors import SettingsError
from kie_covers.runtime.heartbeat import UNTIE_GRACE_S, Heartbeat
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.services import producer
from kie_covers.store.due import Due
from kie_covers.store.jobs import JobStore, Lifetimes
from kie_covers.store.liveness import Liveness, Reaped, holder_id
from kie_covers.store.run import Busy, Run
from kie_covers.store.scripts import register
from tests.conftest import STORE_DB, empty_db, unreachable_redis

CALLBACK = "http://127.0.0.1:9/cb"
#: Dead-after of the registry under test, in seconds (short: old beats are written).
DEAD_AFTER_S = 2.0


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with empty_db(redis_server, STORE_DB) as conn:
        # The reap script refuses to judge while Redis has been up less than DEAD_AFTER_S.
        deadline = time.monotonic() + 30
        while int(conn.info("server")["uptime_in_seconds"]) < DEAD_AFTER_S + 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield conn


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, Lifetimes(result_ttl_s=60, failure_ttl_s=120))


@pytest.fixture
def liveness(client: redis.Redis) -> Liveness:
    return Liveness(client, DEAD_AFTER_S)


def new_job(store: JobStore) -> str:
    """A queued job whose due-set lease is 600 s away (the last resort's default)."""
    job_id, created = store.enqueue(str(uuid.uuid4()), uuid.uuid4().hex, CALLBACK, 600, "q")
    assert created
    return job_id


def begin(store: JobStore, job_id: str, holder: str | None) -> Run:
    job = store.get(job_id)
    assert job is not None
    run = store.begin(job_id, job.music_task_id, job.callback_url, 600, "q", holder=holder)
    assert isinstance(run, Run)
    return run


def kill(client: redis.Redis, holder: str) -> None:
    """Leave `holder`'s heartbeat as a process killed 2 x DEAD_AFTER_S ago would."""
    seconds, micros = client.time()
    client.zadd(keys.BEATS, {holder: seconds * 1000 + micros // 1000
                             - int(2 * DEAD_AFTER_S * 1000)})


def due_in_s(client: redis.Redis, job_id: str) -> float | None:
    value = client.zscore(Due.JOBS.key, job_id)
    return None if value is None else float(value) / 1000 - time.time()


def test_holder_ids_name_node_role_and_process_and_never_repeat() -> None:
    first = holder_id("w1@host|x#y z", "worker", pid=42)
    node, role, pid, token = first.split("|")
    assert (node, role, pid) == ("w1@host_x_y_z", "worker", "42") and token
    assert holder_id("w1@host", "pool", pid=42) != holder_id("w1@host", "pool", pid=42)
    with pytest.raises(ValueError, match="role"):
        holder_id("w1@host", "beat")


def test_a_beating_holder_is_live_and_never_reaped(liveness: Liveness) -> None:
    main, pool = holder_id("w1@h", "worker"), holder_id("w1@h", "pool")
    assert liveness.beat(main) is True  # first beat: registered
    assert liveness.beat(main) is False
    liveness.beat(pool)
    liveness.tie(main, ["job-a"])
    assert set(liveness.live()) == {main, pool}
    assert liveness.live("worker") == [main] and liveness.live("pool") == [pool]
    assert liveness.live_nodes() == ["w1@h"]
    assert liveness.reap() == []
    assert liveness.held(main) == {"job-a"}


def test_a_dead_holder_hands_back_its_waiting_jobs_and_releases_its_run_locks(
    client: redis.Redis, store: JobStore, liveness: Liveness
) -> None:
    # Given a pool process with a run in progress, and its worker holding a prefetched
    # message and a job that has ended since
    main, pool = holder_id("w1@h", "worker"), holder_id("w1@h", "pool")
    other = holder_id("w2@h", "pool")
    running, prefetched, ended, elsewhere = (new_job(store) for _ in range(4))
    for holder in (main, pool, other):
        liveness.beat(holder)
    run = begin(store, running, pool)
    assert run.token.startswith(pool + "#")
    assert liveness.held(pool) == {running}
    liveness.tie(main, [prefetched, ended, elsewhere])
    with begin(store, ended, None) as end_run:
        end_run.finish(images=["https://x/1.png"])
    other_run = begin(store, elsewhere, other)  # a live process runs a job main also held
    assert due_in_s(client, running) > 500  # type: ignore[operator]
    # When both processes of worker w1 stop beating
    kill(client, main)
    kill(client, pool)
    reaped = sorted(liveness.reap())
    # Then their waiting jobs are due now, the dead run's lock is gone, the rest is kept
    assert reaped == sorted([Reaped(main, 2), Reaped(pool, 1)])
    assert due_in_s(client, running) <= 0.5 and due_in_s(client, prefetched) <= 0.5  # type: ignore[operator]
    assert due_in_s(client, ended) is None  # an ended job is not brought back
    assert client.get(keys.lock(running)) is None
    assert client.get(keys.lock(elsewhere)) == other_run.token  # a live process's lock
    assert liveness.live() == [other]
    assert liveness.held(main) == set() and liveness.held(pool) == set()
    assert liveness.reap() == []  # handed back once
    # And the next run can start at once
    begin(store, running, other).abandon()


def test_a_job_due_sooner_keeps_its_time(client: redis.Redis, store: JobStore,
                                          liveness: Liveness) -> None:
    holder = holder_id("w1@h", "worker")
    job_id = new_job(store)
    store.due.later(Due.JOBS, job_id, -30)  # overdue already
    before = client.zscore(Due.JOBS.key, job_id)
    liveness.tie(holder, [job_id])
    kill(client, holder)
    assert liveness.reap() == [Reaped(holder, 1)]
    assert client.zscore(Due.JOBS.key, job_id) == before


def test_nothing_is_reaped_while_redis_has_been_up_less_than_the_dead_after_time(
    client: redis.Redis, store: JobStore
) -> None:
    # A registry whose dead-after time is longer than Redis has been up: every beat
    # could be old only because Redis restarted, so nobody is judged dead.
    patient = Liveness(client, 10.0 ** 9)
    holder = holder_id("w1@h", "worker")
    job_id = new_job(store)
    patient.tie(holder, [job_id])
    client.zadd(keys.BEATS, {holder: 0})
    assert patient.reap() == []
    assert due_in_s(client, job_id) > 500  # type: ignore[operator]
    assert Liveness(client, DEAD_AFTER_S).reap() == [Reaped(holder, 1)]


def test_a_leaving_worker_gives_back_only_what_it_names(
    client: redis.Redis, store: JobStore, liveness: Liveness
) -> None:
    main = holder_id("w1@h", "worker")
    unstarted, running = new_job(store), new_job(store)
    liveness.beat(main)
    liveness.tie(main, [unstarted, running])
    assert liveness.leave(main, [unstarted]) == 1
    assert due_in_s(client, unstarted) <= 0.5  # type: ignore[operator]
    assert due_in_s(client, running) > 500  # type: ignore[operator]
    assert liveness.live() == [] and liveness.held(main) == set()


def test_a_leaving_pool_process_gives_back_everything_it_holds(
    client: redis.Redis, store: JobStore, liveness: Liveness
) -> None:
    pool = holder_id("w1@h", "pool")
    job_id = new_job(store)
    liveness.beat(pool)
    begin(store, job_id, pool)  # a run cut short by the shutdown
    assert liveness.leave(pool) == 1
    assert due_in_s(client, job_id) <= 0.5  # type: ignore[operator]
    assert client.get(keys.lock(job_id)) is None


def test_a_run_unties_its_job_when_it_ends(store: JobStore, liveness: Liveness) -> None:
    pool = holder_id("w1@h", "pool")
    waits, fails, submits = new_job(store), new_job(store), new_job(store)
    with begin(store, waits, pool) as run:
        assert liveness.held(pool) == {waits}
        run.wait(30)
        assert liveness.held(pool) == set()  # by the exit's own script
    with begin(store, submits, pool) as run:
        assert run.submitted("cover-" + submits, 30).changed
        assert liveness.held(pool) == set()
    with pytest.raises(RuntimeError), begin(store, fails, pool):
        raise RuntimeError("a run that leaves by an exception")
    assert liveness.held(pool) == set()


def test_a_run_moves_its_job_from_the_reserving_process_to_the_running_one(
    store: JobStore, liveness: Liveness
) -> None:
    main, pool, other = (holder_id("w1@h", role) for role in ("worker", "pool", "pool"))
    job_id = new_job(store)
    liveness.tie(main, [job_id])
    job = store.get(job_id)
    assert job is not None
    run = store.begin(job_id, job.music_task_id, job.callback_url, 600, "q", holder=pool,
                      reserved_by=main)
    assert isinstance(run, Run)
    assert liveness.held(main) == set() and liveness.held(pool) == {job_id}
    # A duplicate message reserved meanwhile finds the job busy: it leaves the reserving
    # process too, and the running one keeps it
    liveness.tie(main, [job_id])
    busy = store.begin(job_id, job.music_task_id, job.callback_url, 600, "q", holder=other,
                       reserved_by=main)
    assert isinstance(busy, Busy)
    assert liveness.held(main) == set() and liveness.held(other) == set()
    assert liveness.held(pool) == {job_id}


def test_a_begin_retried_after_its_answer_was_lost_goes_on_with_the_run_it_began(
    client: redis.Redis, store: JobStore
) -> None:
    # redis-py sends a script again when the connection drops after Redis ran it: the
    # second call must not find "its own" lock busy (the job would wait for the lock's
    # TTL, COVERS_REDISPATCH_AFTER, with no run and a live holder)
    job_id = new_job(store)
    begin_script = register(client, "begin")
    job_keys = [keys.job(job_id), keys.music("m"), Due.JOBS.key, keys.lock(job_id)]
    args: list[str | int] = [job_id, 1, "w1@h|pool|1|ab#cd", 600_000]
    first, _ = begin_script(keys=job_keys, args=args)
    again, record = begin_script(keys=job_keys, args=args)
    assert (first, again) == ("go", "go") and record
    other, _ = begin_script(keys=job_keys, args=[job_id, 1, "w2@h|pool|2|ef#01", 600_000])
    assert other == "busy"


def test_a_live_pool_process_gives_back_a_job_it_holds_but_no_longer_runs(
    client: redis.Redis, store: JobStore, liveness: Liveness
) -> None:
    beat = Heartbeat(liveness, holder_id("w1@h", "pool"), 0.05, check_runs=True)
    leaked, live = new_job(store), new_job(store)
    # A run whose end could not be recorded (Redis out of reach): lock and tie remain
    begin(store, leaked, beat.holder)
    with beat.running(live):
        begin(store, live, beat.holder)
        beat.beat_once()
        assert liveness.held(beat.holder) == {leaked, live}  # one beat is not enough
        beat.beat_once()
        assert liveness.held(beat.holder) == {live}
        assert due_in_s(client, leaked) <= 0.5  # type: ignore[operator]
        assert client.get(keys.lock(leaked)) is None
        assert client.get(keys.lock(live)) is not None


def test_an_enqueue_retried_after_its_answer_was_lost_still_counts_as_created(
    store: JobStore
) -> None:
    # Else the producer, told "exists", would never send the job's first message
    job_id, music_task_id = str(uuid.uuid4()), uuid.uuid4().hex
    assert store.enqueue(job_id, music_task_id, CALLBACK, 600, "q") == (job_id, True)
    assert store.enqueue(job_id, music_task_id, CALLBACK, 600, "q") == (job_id, True)
    assert store.enqueue(str(uuid.uuid4()), music_task_id, CALLBACK, 600, "q") == (
        job_id, False)


def test_the_heartbeat_unties_messages_its_worker_no_longer_holds(
    liveness: Liveness
) -> None:
    still: set[str] = {"kept", "gone"}
    beat = Heartbeat(liveness, holder_id("w1@h", "worker"), 0.05, lambda: still)
    beat.beat_once()
    beat.tie("kept")
    beat.tie("gone")
    still.discard("gone")
    beat.beat_once()  # tied a moment ago: Celery may not list it as reserved yet
    assert liveness.held(beat.holder) == {"kept", "gone"}
    time.sleep(UNTIE_GRACE_S + 0.05)
    beat.beat_once()
    assert liveness.held(beat.holder) == {"kept"} and beat.tied() == {"kept"}


def test_the_heartbeat_judges_others_only_while_its_own_beats_are_steady(
    client: redis.Redis
) -> None:
    beat = Heartbeat(Liveness(client, 30.0), holder_id("w1@h", "worker"), 0.05)
    assert not beat.may_reap()  # no beat yet
    beat.beat_once()
    assert beat.may_reap()  # a fresh process: nothing was missed
    time.sleep(0.2)  # a break of more than two beats
    beat.beat_once()
    assert not beat.may_reap()  # others may have missed beats too: wait dead-after
    cut = Heartbeat(Liveness(unreachable_redis(), 30.0), holder_id("w1@h", "worker"), 0.05)
    cut.beat_once()  # Redis out of reach: logged, never raised
    assert not cut.may_reap()


def test_a_taken_over_process_ties_its_messages_again(client: redis.Redis,
                                                       liveness: Liveness) -> None:
    beat = Heartbeat(liveness, holder_id("w1@h", "worker"), 0.05, lambda: {"job"})
    beat.beat_once()
    beat.tie("job")
    kill(client, beat.holder)
    assert liveness.reap() == [Reaped(beat.holder, 0)]
    beat.beat_once()  # alive after all (a long pause): registered again, job tied again
    assert liveness.live() == [beat.holder] and liveness.held(beat.holder) == {"job"}


def test_dead_after_must_leave_room_for_late_beats() -> None:
    settings = load_settings({})
    assert (settings.heartbeat_interval, settings.dead_after) == (1.0, 5.0)
    assert settings.redispatch_after == 600.0
    with pytest.raises(SettingsError, match="COVERS_DEAD_AFTER"):
        load_settings({"COVERS_HEARTBEAT_INTERVAL": "2", "COVERS_DEAD_AFTER": "5"})
    with pytest.raises(SettingsError, match="COVERS_HEARTBEAT_INTERVAL"):
        load_settings({"COVERS_HEARTBEAT_INTERVAL": "0"})


def test_a_job_whose_first_message_could_not_be_sent_is_due_at_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No worker holds a message that never reached the broker: without this, only the
    # enqueue's lease (COVERS_REDISPATCH_AFTER, 600 s) would send it
    def broker_down(*_: object, **__: object) -> None:
        raise OperationalError("Error 111 connecting to the broker")

    monkeypatch.setattr(producer, "send_job", broker_down)
    music_task_id = uuid.uuid4().hex
    with pytest.raises(OperationalError):
        producer.enqueue_cover(music_task_id, CALLBACK)
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as db:
        job_id = str(db.get(keys.music(music_task_id)))
        try:
            score = db.zscore(Due.JOBS.key, job_id)
            assert score is not None and score / 1000 <= time.time() + 0.5
            # and enqueueing it again returns that job, which the dispatcher will send
            assert producer.enqueue_cover(music_task_id, CALLBACK) == job_id
        finally:
            db.zrem(Due.JOBS.key, job_id)
            db.delete(keys.job(job_id), keys.music(music_task_id))

