"""Liveness, end to end, with the default timers: a killed worker costs seconds.

Real worker processes are SIGKILLed as whole process groups while their generates
are in flight (the stand-in's slow answers keep them there). Their jobs must run
again as soon as their heartbeats lapse (COVERS_DEAD_AFTER, 5 s by default), not after
COVERS_REDISPATCH_AFTER (600 s) or the broker's visibility timeout (3600 s), and
still be paid once. A slow but live generate must not be taken over. The timers these
claims are about (heartbeat, dead-after, redispatch, dispatch interval, HTTP timeout)
keep their defaults here; the recovery time is printed (`pytest -s`), not bounded.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from kie_covers import enqueue_cover, get_cover
from kie_covers.config import get_settings, keys
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.services.overview import cluster_overview
from kie_covers.standin import KieStandin
from tests.services import StartWorker, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

APP_CALLBACK = "http://127.0.0.1:9/app-callback"
#: The test suite's shortened timers that the claims here are about: back to defaults.
DEFAULT_TIMERS = ("COVERS_REDISPATCH_AFTER", "KIE_HTTP_TIMEOUT", "COVERS_DISPATCH_INTERVAL",
                  "COVERS_HEARTBEAT_INTERVAL", "COVERS_DEAD_AFTER")
#: Seconds each first generate stays in flight at the stand-in.
IN_FLIGHT_S = 4.0


@pytest.fixture
def default_timers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process and the workers it starts use the default liveness timers."""
    for name in DEFAULT_TIMERS:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    assert (settings.redispatch_after, settings.dead_after) == (600.0, 5.0)
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        yield client


def enqueue(count: int, queue: str) -> dict[str, str]:
    """`count` new jobs on `queue`: job id -> music task id."""
    return {enqueue_cover(task_id, APP_CALLBACK, queue=queue): task_id
            for task_id in (uuid.uuid4().hex for _ in range(count))}


def runner_node(db: redis.Redis, job_id: str) -> str | None:
    """The node name of the worker whose run holds `job_id`'s lock (its token names it)."""
    token = db.get(keys.lock(job_id))
    return None if token is None else str(token).split("|", 1)[0]


def attempts(job_id: str) -> int:
    return int(get_cover(job_id)["attempts"])


def assert_paid_once_and_succeeded(jobs: dict[str, str], standin: KieStandin) -> None:
    paid = standin.paid()
    for job_id, task_id in jobs.items():
        record = get_cover(job_id)
        assert record["state"] == "succeeded", record
        assert paid.get(task_id) == 1, f"music task {task_id} paid {paid.get(task_id)} times"


@pytest.mark.parametrize("survivors", [0, 1], ids=["all-killed-new-started", "some-killed"])
def test_jobs_of_workers_killed_mid_generate_run_again_once_their_heartbeats_lapse(
    standin: KieStandin, start_worker: StartWorker, db: redis.Redis, default_timers: None,
    survivors: int
) -> None:
    # Given two workers (and maybe one that lives on), every pool slot in a slow generate
    first = start_worker()
    victims = [first, start_worker(queue=first.queue)]
    live = [start_worker(queue=first.queue) for _ in range(survivors)]
    slots = 2 * (len(victims) + len(live))
    standin.inject("generate", "slow", times=slots, delay_s=IN_FLIGHT_S)
    jobs = enqueue(3 * slots, first.queue)
    wait_until(lambda: standin.counts()["generate"] >= slots, 30, 0.02,
               "every pool slot to be in a generate")
    nodes = {job: runner_node(db, job) for job in jobs}
    # When the victims are SIGKILLed, whole process groups, and (if none lives on) new
    # workers are started at once
    killed_at = time.monotonic()
    for victim in victims:
        victim.kill()
    victim_names = {victim.name for victim in victims}
    held = {job for job, node in nodes.items()
            if node is not None and node.split("@")[0] in victim_names}
    assert len(held) == 2 * len(victims), nodes  # each killed pool slot held one run
    if not live:
        live = [start_worker(queue=first.queue) for _ in victims]
    # Then every job they held runs again (its second generate passes the limiter)...
    ran_again: dict[str, float] = {}

    def all_ran_again() -> bool:
        for job in held - set(ran_again):
            if attempts(job) >= 2:
                ran_again[job] = time.monotonic() - killed_at
        return len(ran_again) == len(held)

    # (waiting far less than COVERS_REDISPATCH_AFTER or the broker's visibility timeout,
    # so only the heartbeat path can have brought them back)
    wait_until(all_ran_again, 60, 0.1, "the killed workers' jobs to run again")
    recovery_s = max(ran_again.values())
    print(f"\nliveness ({len(victims)} workers killed, {survivors} lived on): "
          f"{len(held)} held jobs ran again {min(ran_again.values()):.1f}-{recovery_s:.1f}s "
          f"after the kill (COVERS_DEAD_AFTER={get_settings().dead_after:g}s)")
    assert recovery_s < get_settings().redispatch_after
    # (killed processes cannot leave the registry: a live dispatcher reaped them)
    beating = {str(holder).split("@")[0] for holder in db.zrange(keys.BEATS, 0, -1)}
    assert not beating & victim_names and {w.name for w in live} <= beating
    # The overview's (and the live-workers gauge's) count reads that same registry
    shown = {name.split("@")[0] for name in cluster_overview().workers}
    assert not shown & victim_names and {w.name for w in live} <= shown
    # ...and every job ends, each music task paid once
    wait_until(lambda: all(get_cover(j)["state"] == "succeeded" for j in jobs), 60, 0.2,
               "every job to end")
    print(f"every job ended {time.monotonic() - killed_at:.1f}s after the kill")
    assert_paid_once_and_succeeded(jobs, standin)


def test_a_pool_process_killed_alone_has_its_run_sent_again(
    standin: KieStandin, start_worker: StartWorker, db: redis.Redis, default_timers: None
) -> None:
    # Given a worker whose pool process is in a slow generate
    worker = start_worker()
    standin.inject("generate", "slow", times=1, delay_s=IN_FLIGHT_S)
    jobs = enqueue(1, worker.queue)
    (job_id,) = jobs
    wait_until(lambda: db.get(keys.lock(job_id)) is not None
               and standin.counts()["generate"] >= 1, 30, 0.02, "the generate")
    token = str(db.get(keys.lock(job_id)))
    node, role, pid, _ = token.split("#", 1)[0].split("|")
    assert (node.split("@")[0], role) == (worker.name, "pool")
    # When that pool process alone is SIGKILLed (Celery requeues its message, whose
    # new run finds the dead run's lock)
    killed_at = time.monotonic()
    os.kill(int(pid), signal.SIGKILL)
    # Then the job runs again once the process's heartbeat lapses, and is paid once
    wait_until(lambda: attempts(job_id) >= 2, 60, 0.1, "the job to run again")
    print(f"\nliveness (a pool process killed): its job ran again "
          f"{time.monotonic() - killed_at:.1f}s after the kill")
    wait_until(lambda: get_cover(job_id)["state"] == "succeeded", 60, 0.2, "the job to end")
    assert_paid_once_and_succeeded(jobs, standin)
    pools = [str(h) for h in db.zrange(keys.BEATS, 0, -1) if "|pool|" in str(h)]
    assert f"|pool|{pid}|" not in " ".join(pools)  # reaped, and replaced by billiard


def test_a_slow_but_live_generate_is_never_taken_over(
    standin: KieStandin, start_worker: StartWorker, db: redis.Redis, default_timers: None
) -> None:
    # Given two workers and a generate that Kie answers after 0.8 x KIE_HTTP_TIMEOUT
    # (16 s by default: more than three times COVERS_DEAD_AFTER)
    worker = start_worker()
    other = start_worker(queue=worker.queue)
    slow_s = 0.8 * get_settings().kie_http_timeout
    assert slow_s > 3 * get_settings().dead_after
    standin.inject("generate", "slow", times=1, delay_s=slow_s)
    jobs = enqueue(1, worker.queue)
    (job_id,) = jobs
    wait_until(lambda: standin.counts()["generate"] >= 1, 30, 0.05, "the generate")
    # When it ends
    wait_until(lambda: get_cover(job_id)["state"] == "succeeded", slow_s + 30, 0.2,
               "the job to end")
    # Then it was sent once, run once, paid once, and no worker was taken for dead
    assert standin.counts()["generate"] == 1 and attempts(job_id) == 1
    assert_paid_once_and_succeeded(jobs, standin)
    for process in (worker, other):
        assert "sent again" not in process.log() and "taken for dead" not in process.log()
    # And a warm shutdown leaves the registry at once (no wait for a lapse)
    other.stop()
    beating = {str(h).split("@")[0] for h in db.zrange(keys.BEATS, 0, -1)}
    assert other.name not in beating and worker.name in beating
