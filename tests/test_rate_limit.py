"""The cluster-wide limiter: exact across processes, honoured by workers, pauses and holds."""

from __future__ import annotations

import email.utils
import multiprocessing
import multiprocessing.queues
import time
import uuid
from dataclasses import dataclass, field

import pytest
import redis

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.core.answers import parse_retry_after
from kie_covers.core.states import WaitReason
from kie_covers.runtime.app import app
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.standin import KieStandin
from kie_covers.store.limiter import RateLimiter
from tests.services import StartWorker, WorkerProcess, wait_until

APP_CALLBACK = "http://127.0.0.1:9/app-callback"
LIMIT, PER_S, MARGIN_S = 5, 0.5, 0.0


@dataclass
class _Hammered:
    """What one hammering process saw of the limiter."""

    passed_at: list[float] = field(default_factory=list)  # Redis's clock after each pass
    first_ask_passes: int = 0  # calls let through the first time they asked
    waits: list[tuple[int, str]] = field(default_factory=list)  # (wait_ms, reason) told


def _hammer(url: str, name: str, jobs: int,
            out: multiprocessing.queues.Queue[_Hammered]) -> None:
    """One process: get `jobs` calls through the limiter as fast as it allows."""
    client = redis.Redis.from_url(url, decode_responses=True)
    limiter = RateLimiter(client, "hammer", LIMIT, PER_S, margin_s=MARGIN_S)
    seen = _Hammered()
    for i in range(jobs):
        job = f"{name}-{i}"
        first_ask = True
        while True:
            gate = limiter.acquire(job)
            if gate.go:
                seconds, micros = client.time()
                seen.passed_at.append(seconds + micros / 1e6)
                seen.first_ask_passes += first_ask
                break
            seen.waits.append((gate.wait_ms, str(gate.reason)))
            first_ask = False
            time.sleep(gate.wait_s)
    out.put(seen)


@pytest.mark.e2e  # four processes hammering the limiter
def test_several_processes_sharing_one_limiter_never_exceed_it_in_any_window(
    redis_server: RedisServer, standin: KieStandin
) -> None:
    # Given four processes that each want 10 calls through a 5-per-0.5 s limiter
    out: multiprocessing.queues.Queue[_Hammered] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_hammer, args=(redis_server.url, f"p{n}", 10, out))
             for n in range(4)]
    for p in procs:
        p.start()
    seen = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    times = sorted(t for one in seen for t in one.passed_at)
    # Then no window of 0.5 s holds more than 5 (times read from Redis's clock just
    # after each pass, so they are upper bounds of the pass time: allow 20 ms of slack)
    assert len(times) == 40
    for i in range(len(times) - LIMIT):
        assert times[i + LIMIT] - times[i] >= PER_S - 0.02, (i, times[i:i + LIMIT + 1])
    # And the limit was used, not just kept (counted in the limiter's own answers, not
    # by the clock of a busy machine): a free window let LIMIT calls through at once...
    assert sum(one.first_ask_passes for one in seen) >= LIMIT
    # ...and every call held back was told to come back as soon as the window has room:
    # never later than the oldest call in it leaves (the limiter counts in whole ms, and
    # with four processes, fewer than LIMIT, no slot is reserved over a window ahead)
    waits = [wait for one in seen for wait in one.waits]
    assert {reason for _, reason in waits} == {WaitReason.RATE_SLOT.value}  # (some waited)
    assert max(wait_ms for wait_ms, _ in waits) <= int((PER_S + MARGIN_S) * 1000) + 1


@pytest.mark.e2e
def test_two_worker_processes_sharing_the_limit_get_no_429(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    # Given Kie allows 5 generates per second, and two separate workers know that
    standin.set_rate_limit((5, 1.0))
    # (The default HTTP timeout, not the suite's 2 s: on a loaded machine a slow answer
    # would time out and be tried again, a real second attempt this test is not about;
    # the lease must exceed 3 x that timeout.)
    first = start_worker(KIE_RATE_LIMIT="5/1s", KIE_HTTP_TIMEOUT="20",
                         COVERS_REDISPATCH_AFTER="90")
    start_worker(queue=first.queue, KIE_RATE_LIMIT="5/1s", KIE_HTTP_TIMEOUT="20",
                 COVERS_REDISPATCH_AFTER="90")
    # When 25 jobs arrive at once
    job_ids = [enqueue_cover(uuid.uuid4().hex, APP_CALLBACK, queue=first.queue)
               for _ in range(25)]
    records = [wait_for_cover(j, timeout_s=60) for j in job_ids]
    # Then all succeed, and Kie never had to refuse one
    assert [r["state"] for r in records] == ["succeeded"] * 25
    assert all(r["attempts"] == 1 for r in records)  # waiting is not an attempt
    assert standin.answers().get("generate:429", 0) == 0
    assert standin.answers().get("generate:200") == 25
    # And the workers held the excess back themselves: Kie saw 25 calls in all, one per
    # job (none made only to be refused), and never six within one of its windows. (That
    # the limiter wastes no room is counted in its own answers in the test above.)
    assert standin.counts()["generate"] == 25
    accepted = sorted(standin.generate_times())
    assert len(accepted) == 25
    assert all(accepted[i + 5] - accepted[i] >= 1.0 for i in range(len(accepted) - 5))


@pytest.mark.e2e
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_in_both_forms_is_honoured(
    standin: KieStandin, worker: WorkerProcess, form: str
) -> None:
    wait_s = 2
    value = str(wait_s) if form == "seconds" else email.utils.formatdate(
        time.time() + wait_s + 1, usegmt=True)
    standin.inject("generate", "429", times=1, retry_after=value)
    started = time.monotonic()
    record = wait_for_cover(enqueue_cover(uuid.uuid4().hex, APP_CALLBACK), timeout_s=30)
    assert record["state"] == "succeeded"
    accepted = standin.generate_times()
    assert len(accepted) == 1
    # the HTTP date has whole-second precision: at least wait_s - 1 s after the refusal
    assert accepted[0] - started >= wait_s - (1.05 if form == "http-date" else 0.05)


def test_parse_retry_after_reads_both_forms() -> None:
    assert parse_retry_after("7") == 7.0
    now = time.time()
    in_30 = email.utils.formatdate(now + 30, usegmt=True)
    assert 28.0 <= (parse_retry_after(in_30, now=now) or 0) <= 30.0
    assert parse_retry_after("yesterday-ish") is None
    assert parse_retry_after("-5") == 0.0


@pytest.mark.e2e
def test_maintenance_pauses_every_worker_and_they_resume_by_themselves(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    # Given two workers and a 1.5 s maintenance pause
    first = start_worker(COVERS_MAINTENANCE_PAUSE="1.5")
    start_worker(queue=first.queue, COVERS_MAINTENANCE_PAUSE="1.5")
    standin.inject("generate", "455", times=1)
    # When one job meets maintenance (the pause begins after the last look that found
    # no 455 yet: a moment taken before the refusal, however late this process sees it)...
    looked_before: list[float] = []

    def refused() -> bool:
        looked_at = time.monotonic()
        if standin.answers().get("generate:455") == 1:
            return True
        looked_before.append(looked_at)
        return False

    looked_before.append(time.monotonic())
    job_ids = [enqueue_cover(uuid.uuid4().hex, APP_CALLBACK, queue=first.queue)]
    wait_until(refused, 10, 0.01, "the 455")
    refused_after = looked_before[-1]
    # ...and five more arrive during the pause
    job_ids += [enqueue_cover(uuid.uuid4().hex, APP_CALLBACK, queue=first.queue)
                for _ in range(5)]
    records = [wait_for_cover(j, timeout_s=30) for j in job_ids]
    # Then all complete with no command, and no generate was sent during the pause
    assert [r["state"] for r in records] == ["succeeded"] * 6
    assert standin.answers().get("generate:455") == 1
    assert min(standin.generate_times()) >= refused_after + 1.5 - 0.1
    assert standin.counts()["generate"] == 7


@pytest.mark.e2e
def test_out_of_credits_stops_everyone_and_resumes_when_topped_up(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    # Given an empty account and two workers (credit re-check every 0.5 s)
    standin.set_credits(0)
    first = start_worker()
    start_worker(queue=first.queue)
    job_ids = [enqueue_cover(uuid.uuid4().hex, APP_CALLBACK, queue=first.queue)
               for _ in range(5)]
    # When they have waited a while
    wait_until(lambda: all(get_cover(j)["waiting_for"] == "out_of_credits" for j in job_ids),
               20, message="every job to wait for credits")
    refused = standin.counts()["generate"]
    time.sleep(1.5)
    # Then only the calls already in flight when the first 402 came were refused (at most
    # one per pool slot: 2 workers x 2), and no generate was sent while credits were out
    assert 1 <= refused <= 4
    assert standin.answers().get("generate:402") == refused
    assert standin.counts()["generate"] == refused
    assert standin.counts()["credit"] >= 1
    assert all(get_cover(j)["state"] == "queued" for j in job_ids)
    # And the waiting jobs sit in Redis, not as countdown tasks in a worker's memory
    replies = app.control.inspect(timeout=1.0).scheduled() or {}
    assert replies and all(tasks == [] for tasks in replies.values())
    # And once credits are topped up, every job completes, each paid once
    standin.set_credits(100)
    records = [wait_for_cover(j, timeout_s=30) for j in job_ids]
    assert [r["state"] for r in records] == ["succeeded"] * 5
    assert sorted(standin.paid().values()) == [1] * 5


@pytest.mark.e2e
def test_jobs_waiting_for_credits_fail_as_retryable_after_the_maximum_wait(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    standin.set_credits(0)
    w = start_worker(COVERS_CREDITS_MAX_WAIT="2")
    record = wait_for_cover(enqueue_cover(uuid.uuid4().hex, APP_CALLBACK, queue=w.queue),
                            timeout_s=30)
    assert record["state"] == "failed"
    assert record["error"]["kind"] == "out_of_credits"
    assert record["error"]["retryable"] is True
