"""The promise under faults: every job reaches exactly one end state the app can read,
no job is lost, no music task is paid twice, bad input never crashes a worker.

Each scenario drives real worker processes, the suite's own redis-server (which it
restarts) and the stand-in, then checks the promise from the stand-in's ledger
(generates accepted per music task) and from `get_cover` for every job.
"""

from __future__ import annotations

import random
import time
import uuid

import pytest
import redis

from kie_covers import enqueue_cover, get_cover
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.standin import KieStandin
from tests.services import StartWorker, WebProcess, WorkerProcess, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

APP_CALLBACK = "http://127.0.0.1:9/app-callback"


def enqueue_batch(count: int, queue: str) -> dict[str, str]:
    """`count` new jobs on `queue`: job id -> music task id."""
    jobs: dict[str, str] = {}
    for _ in range(count):
        task_id = uuid.uuid4().hex
        jobs[enqueue_cover(task_id, APP_CALLBACK, queue=queue)] = task_id
    return jobs


def all_ended(jobs: dict[str, str]) -> bool:
    return all(get_cover(j)["state"] in ("succeeded", "failed") for j in jobs)


def assert_promise(jobs: dict[str, str], standin: KieStandin,
                   must_succeed: bool = True) -> dict[str, int]:
    """Every job ended once and is readable; nobody paid twice; returns the end states."""
    paid = standin.paid()
    states: dict[str, int] = {}
    for job_id, task_id in jobs.items():
        record = get_cover(job_id)  # raises if the job was lost
        assert record["state"] in ("succeeded", "failed"), record
        states[record["state"]] = states.get(record["state"], 0) + 1
        assert paid.get(task_id, 0) <= 1, f"music task {task_id} paid {paid[task_id]} times"
        if record["state"] == "succeeded":
            assert len(record["images"]) == 2 and paid.get(task_id) == 1, record
        else:
            assert record["error"]["kind"] and record["error"]["message"], record
    if must_succeed:
        assert states == {"succeeded": len(jobs)}, states
    return states


def await_promise(jobs: dict[str, str], standin: KieStandin, timeout_s: float,
                  must_succeed: bool = True) -> dict[str, int]:
    """`assert_promise` once every job has ended (within `timeout_s` seconds)."""
    wait_until(lambda: all_ended(jobs), timeout_s, 0.5, "every job to end")
    return assert_promise(jobs, standin, must_succeed)


def two_workers(start_worker: StartWorker) -> list[WorkerProcess]:
    """Two workers on one queue (the first one's)."""
    first = start_worker()
    return [first, start_worker(queue=first.queue)]


def test_workers_killed_at_random_moments_lose_nothing_and_pay_nothing_twice(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    rng = random.Random(5)
    workers = two_workers(start_worker)
    queue = workers[0].queue
    jobs = enqueue_batch(150, queue)
    for _ in range(4):
        time.sleep(rng.uniform(0.5, 2.0))
        victim = workers.pop(rng.randrange(len(workers)))
        victim.kill()  # SIGKILL, pool children included
        workers.append(start_worker(queue=queue))
    await_promise(jobs, standin, 90)


def test_a_broker_connection_cut_mid_run_loses_nothing(
    standin: KieStandin, start_worker: StartWorker, redis_server: RedisServer
) -> None:
    jobs = enqueue_batch(100, two_workers(start_worker)[0].queue)
    admin = redis.Redis.from_url(redis_server.url)
    for _ in range(3):
        time.sleep(0.7)
        # Cut every client connection but ours: workers' broker, backend and store links.
        admin.client_kill_filter(_type="normal", skipme=True)
    await_promise(jobs, standin, 90)


def test_a_redis_restart_mid_run_loses_nothing(
    standin: KieStandin, start_worker: StartWorker, redis_server: RedisServer
) -> None:
    # (The suite's redis-server runs with appendonly yes, as the README tells operators.)
    jobs = enqueue_batch(100, two_workers(start_worker)[0].queue)
    time.sleep(1.0)
    redis_server.restart()
    await_promise(jobs, standin, 120)


def test_a_mix_of_api_faults_ends_every_job_once_and_pays_once(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    # Given Kie answering a mix of faults on every endpoint, some slower than our timeout
    worker = start_worker(COVERS_MAX_ATTEMPTS="8")
    for fault in ("500", "body-500", "455", "429", "body-429", "malformed", "html", "empty",
                  "reset", "no-data"):
        standin.inject("any", fault, times=6)
    standin.inject("generate", "slow", times=3, delay_s=2.5)  # KIE_HTTP_TIMEOUT is 2 s
    jobs = enqueue_batch(60, worker.queue)
    states = await_promise(jobs, standin, 120, must_succeed=False)
    # Every fault is one a retry fixes, and 8 attempts are plenty for 63 faults spread
    # over 60 jobs: so every cover is made.
    assert states == {"succeeded": 60}


@pytest.mark.parametrize(("mode", "delay_s"), [("drop", 0.0), ("duplicate", 0.0),
                                                ("delay", 1.2)])
def test_lost_duplicated_or_late_callbacks_end_each_job_once(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess, mode: str, delay_s: float
) -> None:
    # poll every 0.5 s: a callback delayed 1.2 s arrives after the poll ended the job
    standin.set_callback_mode(mode, delay_s)
    worker = start_worker()
    jobs = enqueue_batch(40, worker.queue)
    wait_until(lambda: all_ended(jobs), 60, 0.3, "every job to end")
    finished = {j: get_cover(j)["finished_at"] for j in jobs}
    time.sleep(delay_s + 0.5)  # let late and duplicate callbacks land
    assert_promise(jobs, standin)
    assert {j: get_cover(j)["finished_at"] for j in jobs} == finished
