"""Fair slots: the generate limiter's order (lanes, tenants, arrival) and its limit.

The fast tests drive `FairLimiter`'s scripts in process, on the suite's Redis (a
database of their own): each decision is one script, so its order can be read
exactly. The end-to-end tests run real workers against the stand-in, whose own
limit refuses (429) any call over it, and read the order of its accepted
generates.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kie_covers import enqueue_cover, get_cover
from kie_covers.config import keys
from kie_covers.core.errors import NotFound
from kie_covers.core.states import WaitReason
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.standin import KieStandin
from kie_covers.store import fair as fair_module
from kie_covers.store.fair import GRANT_LEAD_S, FairLimiter
from kie_covers.store.history import event
from kie_covers.store.jobs import JobStore, Lifetimes
from kie_covers.store.limiter import Place, Verdict
from tests.conftest import FAIR_DB, empty_db, process_env
from tests.services import ROOT, StartWorker, wait_until

APP_CALLBACK = "http://127.0.0.1:9/app-callback"
LEAD_MS = int(GRANT_LEAD_S * 1000)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an emptied database of the suite's Redis, this module's own."""
    with empty_db(redis_server, FAIR_DB) as conn:
        yield conn


def limiter(client: redis.Redis, limit: int, per_s: float, **kwargs: float) -> FairLimiter:
    return FairLimiter(client, "generate", limit, per_s, margin_s=0.0, gate_on_credits=True,
                       park_min_s=kwargs.pop("park_min_s", 30.0), **kwargs)


def queued_job(client: redis.Redis, job_id: str | None = None) -> str:
    """A job record in state queued (the limiter grants only those)."""
    job_id = job_id or uuid.uuid4().hex[:8]
    client.hset(keys.job(job_id), mapping={"job_id": job_id, "state": "queued"})
    return job_id


def fill(client: redis.Redis, fair: FairLimiter) -> None:
    """Use the whole window, so that the next asks queue."""
    for _ in range(fair.limit):
        assert fair.acquire(queued_job(client), place=Place("bulk", "filler")).go


#: Window (s) of the limiters whose tests wait for the next round: short, so they are quick.
ROUND_S = 0.15


def full_limiter(client: redis.Redis, limit: int, **kwargs: float) -> FairLimiter:
    """A limiter of `limit` calls per ROUND_S whose window is used up: the next asks wait."""
    fair = limiter(client, limit, ROUND_S, **kwargs)
    fill(client, fair)
    return fair


def next_round(fair: FairLimiter) -> tuple[str, ...]:
    """The jobs granted once the window has passed."""
    time.sleep(fair.window_ms / 1000 + 0.02)
    return fair.grant().granted


def test_a_job_goes_at_once_while_the_window_has_room_then_waits_parked(
    client: redis.Redis
) -> None:
    fair = limiter(client, 2, 30.0, park_min_s=45.0)
    first, second, third = (queued_job(client) for _ in range(3))
    assert fair.acquire(first).go and fair.acquire(second).go
    gate = fair.acquire(third)
    # Parked: it waits in Redis for a grant; its wait is only the safety net
    assert gate.verdict is Verdict.WAIT and gate.parked
    assert gate.reason is WaitReason.RATE_SLOT and gate.wait_ms >= 45_000
    assert fair.waiting() == 1
    # Asking again changes nothing: it keeps its one place
    assert fair.acquire(third).parked and fair.waiting() == 1
    assert fair.grant().granted == ()


def test_a_new_job_is_admitted_with_a_message_only_when_its_turn_has_come(
    client: redis.Redis
) -> None:
    fair = limiter(client, 1, 30.0)
    # Before any worker has asked, the limit in force is unknown: sent, not queued (its
    # run asks with the worker's limit)
    early = queued_job(client)
    assert fair.admit(early)
    assert fair.waiting() == 0
    assert fair.acquire(early).go
    # Once the window is used, a new job waits in Redis: no message to send
    later = queued_job(client)
    assert not fair.admit(later, Place("bulk", "acme"))
    assert client.hget(keys.job(later), "wait_reason") == WaitReason.RATE_SLOT.value
    assert fair.waiting() == 1 and fair.acquire(later).parked
    # With room (another limiter, whose workers have asked), a new job is granted at
    # once, and its run goes with the grant
    roomy = FairLimiter(client, "roomy", 5, 30.0, margin_s=0.0)
    assert roomy.acquire(queued_job(client)).go
    now = queued_job(client)
    assert roomy.admit(now)
    assert roomy.acquire(now).go


def test_a_new_job_is_recorded_timed_and_admitted_in_one_step_once_per_music_task(
    client: redis.Redis
) -> None:
    store = JobStore(client, Lifetimes(result_ttl_s=60, failure_ttl_s=120))
    fair = limiter(client, 1, 30.0)

    def enqueue(music: str, job_id: str | None = None, via: FairLimiter = fair,
                place: Place | None = None) -> tuple[str, bool]:
        return store.enqueue_and_admit(
            job_id or uuid.uuid4().hex, music, APP_CALLBACK, 30, "q", "bulk", "acme",
            admission=via.admission(place), timeline=event("enqueued", queue="q"))

    def timeline(job_id: str) -> list[str]:
        return [entry["event"] for entry in store.history.read(job_id)]

    # Before any worker has asked: recorded, its timeline begun, sent (not queued)
    early, send_now = enqueue("m-early")
    job = store.get(early)
    assert send_now and job is not None and job.state == "queued"
    assert (job.priority, job.tenant, job.queue) == ("bulk", "acme", "q")
    assert client.zscore(keys.state_index("queued"), early) is not None
    assert client.zscore(keys.DUE, early) is not None  # its lease
    assert timeline(early) == ["enqueued"] and fair.waiting() == 0
    assert fair.acquire(early).go  # a worker asks: the limit is known, the window used
    # Once the window is used: queued in Redis, no message to send
    later, send_now = enqueue("m-later", place=Place("bulk", "acme"))
    assert not send_now and fair.waiting() == 1
    assert client.hget(keys.job(later), "wait_reason") == WaitReason.RATE_SLOT.value
    # A repeat for the same music task changes nothing: the same job, one entry, one place
    assert enqueue("m-later") == (later, False)
    # ...and so does this very call sent again (its answer lost): it answers as before
    assert enqueue("m-later", later) == (later, False)
    assert timeline(later) == ["enqueued"] and fair.waiting() == 1
    assert len(client.keys(keys.job("*"))) == 2
    # With room (another limiter, whose workers have asked), granted at once
    roomy = FairLimiter(client, "roomy", 5, 30.0, margin_s=0.0)
    assert roomy.acquire(queued_job(client)).go
    now, send_now = enqueue("m-now", via=roomy)
    assert send_now and enqueue("m-now", now, via=roomy) == (now, True)
    assert enqueue("m-now", via=roomy) == (now, False)
    assert roomy.acquire(now).go
    # A failed job's music task gets a new job, admitted like any
    store.finish(later, error=NotFound("gone", 404))
    newer, send_now = enqueue("m-later")
    assert newer != later and not send_now and timeline(newer) == ["enqueued"]
    assert client.zscore(keys.FAILURES, later) is None


#: In a producer process: `enqueue_cover` for new music tasks (argv 2 of them) and one
#: repeat, once a worker has asked and used the window (so none is sent), under Redis's
#: MONITOR; prints the commands clients sent (not those scripts ran) in between.
COUNT_ENQUEUES = """
import json, os, sys, uuid
import redis
from kie_covers import enqueue_cover
from kie_covers.runtime.connections import get_limiters, get_redis
first = enqueue_cover(uuid.uuid4().hex, sys.argv[1])  # loads the script; sent
assert get_limiters().generate.acquire(first).go  # a worker asks: the window is used
sent = []
with redis.Redis.from_url(os.environ["REDIS_URL"]).monitor() as monitor:
    music = [uuid.uuid4().hex for _ in range(int(sys.argv[2]))]
    ids = [enqueue_cover(task, sys.argv[1]) for task in music]
    repeat = enqueue_cover(music[0], sys.argv[1])
    get_redis().echo("counted")
    for command in monitor.listen():
        if command["command"] == "ECHO counted":
            break
        if command["client_type"] != "lua":
            sent.append(command["command"].split()[0].lower())
print(json.dumps({"ids": ids, "repeat": repeat, "sent": sent,
                  "waiting": get_limiters().generate.waiting()}))
"""


def test_a_new_enqueue_is_one_redis_command_and_so_is_a_repeat(tmp_path: Path) -> None:
    private = RedisServer(tmp_path / "count-redis", appendonly=False).start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", COUNT_ENQUEUES, APP_CALLBACK, "5"], cwd=ROOT,
            env=process_env(REDIS_URL=private.url, KIE_RATE_LIMIT="1/60s"),
            capture_output=True, text=True, timeout=60, check=True)
    finally:
        private.stop()
    out = json.loads(done.stdout)
    assert out["repeat"] == out["ids"][0] and len(set(out["ids"])) == 5
    assert out["waiting"] == 5  # each queued in the fair order, none sent
    # Record, timeline and admission: one script a job; a repeat: one script too
    assert out["sent"] == ["evalsha"] * 6


def test_an_interactive_job_is_granted_before_a_waiting_bulk_backlog(
    client: redis.Redis
) -> None:
    fair = full_limiter(client, 2)
    bulk = [queued_job(client, f"bulk-{n}") for n in range(4)]
    for job in bulk:
        assert fair.acquire(job, place=Place("bulk", "acme")).parked
    urgent = queued_job(client, "urgent")
    assert fair.acquire(urgent, place=Place("interactive", "globex")).parked
    assert next_round(fair) == ("urgent", "bulk-0")


def test_bulk_gets_its_minimum_share_while_interactive_jobs_wait(client: redis.Redis) -> None:
    fair = full_limiter(client, 10, bulk_min_share=0.2)
    for n in range(10):
        assert fair.acquire(queued_job(client, f"i{n}"), place=Place("interactive")).parked
        assert fair.acquire(queued_job(client, f"b{n}"), place=Place("bulk")).parked
    granted = next_round(fair)
    # Every fifth slot to bulk (0.2), the rest to interactive, each lane in arrival order
    assert granted == ("i0", "i1", "i2", "i3", "b0", "i4", "i5", "i6", "i7", "b1")


def test_tenants_take_turns_within_a_lane_and_each_is_served_in_arrival_order(
    client: redis.Redis
) -> None:
    fair = full_limiter(client, 10)
    # Given tenant a with 6 jobs (asking out of arrival order), b with 3, c with 1
    for n in (5, 3, 0, 1, 2, 4):
        assert fair.acquire(queued_job(client, f"a{n}"),
                            place=Place("bulk", "a", 1_000 + n)).parked
    for n in range(3):
        assert fair.acquire(queued_job(client, f"b{n}"), place=Place("bulk", "b", 1)).parked
    assert fair.acquire(queued_job(client, "c0"), place=Place("bulk", "c", 5)).parked
    # Then they take turns, each tenant's jobs by arrival
    assert next_round(fair) == ("a0", "b0", "c0", "a1", "b1", "a2", "b2", "a3", "a4", "a5")


def test_the_grant_log_keeps_every_slot_in_grant_order_with_lane_and_tenant(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fair_module, "GRANT_LOG_LENGTH", 8)
    fair = full_limiter(client, 6)
    for n in range(3):
        assert fair.acquire(queued_job(client, f"a{n}"), place=Place("bulk", "a")).parked
        assert fair.acquire(queued_job(client, f"d{n}"), place=Place("bulk")).parked
    assert fair.acquire(queued_job(client, "urgent"), place=Place("interactive", "b")).parked
    before_ms = int(time.time() * 1000)
    granted = next_round(fair)
    log = fair.recent_grants()
    # The six fillers' slots and this round's: the last 8 only, oldest first
    assert len(log) == 8 and [g.job_id for g in log[-6:]] == list(granted)
    assert [(g.lane, g.tenant) for g in log[-6:]] == [
        ("interactive", "b"), ("bulk", "a"), ("bulk", None), ("bulk", "a"), ("bulk", None),
        ("bulk", "a")]
    assert all(g.at_ms >= before_ms for g in log[-6:])
    assert [g.job_id for g in fair.recent_grants(2)] == list(granted[-2:])


def test_a_granted_job_goes_and_others_wait_for_their_grant(client: redis.Redis) -> None:
    fair = full_limiter(client, 1)
    first, second = queued_job(client), queued_job(client)
    assert fair.acquire(first).parked and fair.acquire(second).parked
    assert next_round(fair) == (first,)
    # The grant made it due now, for a dispatcher to send
    assert float(client.zscore(keys.DUE, first) or 0) <= time.time() * 1000 + 1
    # The other, asking now, does not take the slot kept for the first
    assert fair.acquire(second).parked
    assert fair.acquire(first).go
    assert fair.waiting() == 1


def test_a_grant_comes_just_before_the_room_and_its_job_waits_that_out(
    client: redis.Redis
) -> None:
    fair = limiter(client, 1, 30.0)
    job = queued_job(client)
    # Given the one call of the window sent long ago: it leaves the window in 40 ms
    now_s, now_us = client.time()
    leaves_in_ms = 40
    sent_ms = now_s * 1000 + now_us // 1000 - fair.window_ms + leaves_in_ms
    client.zadd(keys.rate_sent("generate"), {f"old:{sent_ms}": sent_ms})
    # When the job asks: the room opens within the lead, so it is granted now...
    gate = fair.acquire(job)
    assert not gate.parked
    # ...and it goes once the window really has room (the limit is that check)
    if not gate.go:
        assert gate.granted and 0 < gate.wait_ms <= leaves_in_ms + 1
        time.sleep(gate.wait_s)
        assert fair.acquire(job).go
    latest = client.zrange(keys.rate_sent("generate"), -1, -1, withscores=True)
    assert float(latest[0][1]) >= sent_ms + fair.window_ms


def test_an_unused_grant_goes_back_to_its_place_and_ended_jobs_take_no_slot(
    client: redis.Redis
) -> None:
    fair = full_limiter(client, 1, grant_ttl_s=0.2)
    lost, ended, later = (queued_job(client, name) for name in ("lost", "ended", "later"))
    for n, job in enumerate((lost, ended, later)):
        assert fair.acquire(job, place=Place("bulk", "t", 1_000 + n)).parked
    # Given the first is granted but its worker never comes
    assert next_round(fair) == ("lost",)
    assert fair.grant().granted == ()  # its slot stays kept while the grant lives
    # When the grant expires, it is granted again, first of its tenant
    time.sleep(0.25)
    assert fair.grant().granted == ("lost",)
    assert fair.acquire(lost).go
    # And a job that ended while it waited leaves without taking the slot
    client.hset(keys.job(ended), "state", "failed")
    assert next_round(fair) == ("later",)
    assert fair.waiting() == 1  # only "later", granted; "ended" has left


def test_no_grant_during_a_pause_or_a_credits_hold(client: redis.Redis) -> None:
    fair = full_limiter(client, 1)
    job = queued_job(client)
    assert fair.acquire(job).parked
    fair.pause_all(5, WaitReason.MAINTENANCE)
    time.sleep(ROUND_S + 0.02)
    paused = fair.grant()
    assert paused.granted == () and paused.next_in_s is not None and paused.next_in_s > 4
    client.delete(keys.PAUSE)
    fair.hold_credits(WaitReason.OUT_OF_CREDITS)
    assert fair.grant() == type(paused)((), None)
    assert fair.acquire(job).verdict is Verdict.PROBE  # one asker checks the credits
    fair.release_credits()
    assert fair.grant().granted == (job,)


def test_a_job_granted_before_its_run_parked_it_is_made_due_again(client: redis.Redis) -> None:
    fair = full_limiter(client, 1)
    job = queued_job(client)
    assert fair.acquire(job).parked
    assert next_round(fair) == (job,)
    # Its run, finishing after the grant, parks it far ahead...
    client.zadd(keys.DUE, {job: time.time() * 1000 + 60_000})
    # ...and looks again: granted, so due now
    assert fair.wake_if_granted(job)
    assert float(client.zscore(keys.DUE, job) or 0) <= time.time() * 1000 + 1
    assert not fair.wake_if_granted(queued_job(client))


def test_the_limit_holds_in_every_window_through_random_asks_grants_and_ends(
    client: redis.Redis
) -> None:
    limit, per_s = 3, 0.1
    fair = limiter(client, limit, per_s, grant_ttl_s=0.15)
    rng = random.Random(16)
    sent_at: list[int] = []  # the limiter's own clock at each call let through (ms)
    asked: list[str] = []
    for _ in range(400):
        action = rng.random()
        if action < 0.35 or not asked:
            job = queued_job(client)
            asked.append(job)
            gate = fair.acquire(job, place=Place(rng.choice(["interactive", "bulk"]),
                                                 rng.choice(["a", "b", None])))
        elif action < 0.55:
            for job in fair.grant().granted:
                if rng.random() < 0.9:  # some granted jobs never come
                    gate = fair.acquire(job)
                    if gate.granted:  # granted a little before the room: wait it out
                        time.sleep(gate.wait_s)
                        gate = fair.acquire(job)
                    if gate.go:
                        sent_at.append(int(client.zrange(keys.rate_sent("generate"), -1, -1,
                                                         withscores=True)[0][1]))
            continue
        elif action < 0.6:
            client.hset(keys.job(rng.choice(asked)), "state", "failed")
            continue
        else:
            time.sleep(rng.choice([0.0, 0.005, 0.02]))
            continue
        if gate.go:
            sent_at.append(int(client.zrange(keys.rate_sent("generate"), -1, -1,
                                             withscores=True)[0][1]))
        # Never more calls sent in the window than the limit, nor more grants kept than
        # the room there will be once the lead (GRANT_LEAD_S) has passed
        now_s, now_us = client.time()
        now_ms = now_s * 1000 + now_us // 1000
        sent = keys.rate_sent("generate")
        assert client.zcount(sent, f"({now_ms - fair.window_ms}", "+inf") <= limit
        staying = client.zcount(sent, f"({now_ms + LEAD_MS - fair.window_ms}", "+inf")
        assert staying + client.zcard(keys.rate_grants("generate")) <= limit
    sent_at.sort()
    assert len(sent_at) > limit  # (the run did send, past its first window)
    assert all(sent_at[i + limit] - sent_at[i] >= fair.window_ms
               for i in range(len(sent_at) - limit))


# -- end to end: real workers, the stand-in's own limit ------------------------------


def _no_window_over(standin: KieStandin, limit: int, per_s: float) -> None:
    """The stand-in refused nothing, and no window of `per_s` held more than `limit`."""
    assert standin.answers().get("generate:429", 0) == 0
    times = standin.generate_times()
    assert all(times[i + limit] - times[i] >= per_s for i in range(len(times) - limit))


def _sent_order(standin: KieStandin, music: dict[str, str]) -> list[str]:
    """Labels of the music tasks in the order the stand-in accepted their generates."""
    return [music[m] for m in standin.generate_order() if m in music]


def _enqueue(label: str, count: int, queue: str, priority: str, tenant: str,
             music: dict[str, str]) -> list[str]:
    ids = []
    for _ in range(count):
        music_id = uuid.uuid4().hex
        music[music_id] = label
        ids.append(enqueue_cover(music_id, APP_CALLBACK, queue=queue, priority=priority,
                                 tenant=tenant))
    return ids


def _all_end(job_ids: list[str]) -> None:
    wait_until(lambda: all(get_cover(j)["state"] == "succeeded" for j in job_ids), 60, 0.1,
               "every job to succeed")


@pytest.mark.e2e
def test_an_interactive_job_overtakes_a_waiting_bulk_backlog(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    limit, per_s = 3, 1.0
    standin.set_rate_limit((limit, per_s))
    worker = start_worker(KIE_RATE_LIMIT=f"{limit}/{per_s:g}s")
    music: dict[str, str] = {}
    # Given a backlog of 12 bulk jobs of tenant a, the first window already used
    bulk = _enqueue("bulk", 12, worker.queue, "bulk", "a", music)
    wait_until(lambda: len(standin.generate_times()) >= limit, 30, 0.05, "the first window")
    # When one interactive job of tenant b arrives
    urgent = _enqueue("urgent", 1, worker.queue, "interactive", "b", music)
    sent_before = len(standin.generate_times())
    _all_end(bulk + urgent)
    # Then it is sent after at most the slots already handed out, not after the backlog
    order = _sent_order(standin, music)
    assert order.index("urgent") <= sent_before + limit < len(bulk)
    _no_window_over(standin, limit, per_s)


@pytest.mark.e2e
def test_bulk_still_progresses_while_interactive_jobs_keep_coming(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    limit, per_s = 5, 1.0
    standin.set_rate_limit((limit, per_s))
    worker = start_worker(KIE_RATE_LIMIT=f"{limit}/{per_s:g}s", COVERS_BULK_MIN_SHARE="0.2")
    music: dict[str, str] = {}
    # Given more interactive jobs than the limit lets through for a while...
    interactive = _enqueue("interactive", 25, worker.queue, "interactive", "a", music)
    wait_until(lambda: len(standin.generate_times()) >= limit, 30, 0.05, "the first window")
    # ...when bulk jobs arrive and more interactive ones keep coming
    bulk = _enqueue("bulk", 5, worker.queue, "bulk", "b", music)
    interactive += _enqueue("interactive", 5, worker.queue, "interactive", "a", music)
    _all_end(interactive + bulk)
    # Then bulk got slots while interactive jobs still waited: about every fifth
    order = _sent_order(standin, music)
    last_interactive = len(order) - 1 - order[::-1].index("interactive")
    bulk_meanwhile = order[:last_interactive].count("bulk")
    assert bulk_meanwhile >= 3, order
    _no_window_over(standin, limit, per_s)


@pytest.mark.e2e
def test_two_tenants_alternate(standin: KieStandin, start_worker: StartWorker) -> None:
    limit, per_s = 2, 1.0
    standin.set_rate_limit((limit, per_s))
    worker = start_worker(KIE_RATE_LIMIT=f"{limit}/{per_s:g}s")
    music: dict[str, str] = {}
    # Given tenant a's 10 bulk jobs, all asked (2 sent, the rest waiting)...
    first = _enqueue("a", 10, worker.queue, "bulk", "a", music)

    def waiting(job_ids: list[str], count: int) -> bool:
        reasons = [str(get_cover(j)["waiting_for"]) for j in job_ids]
        return reasons.count(WaitReason.RATE_SLOT.value) >= count

    wait_until(lambda: waiting(first, 10 - limit), 30, 0.05, "a's jobs to wait")
    # ...when tenant b's 4 arrive and wait too
    second = _enqueue("b", 4, worker.queue, "bulk", "b", music)
    wait_until(lambda: waiting(second, 4), 30, 0.05, "b's jobs to wait")
    settled = len(standin.generate_times())
    _all_end(first + second)
    # Then, once the slots already handed out are used, a and b take turns until b's
    # jobs are done: never more than one window's worth (`limit`, whose calls go out
    # together, in any order) of one tenant in a row; first come, first served would
    # have sent all of a's backlog first
    order = _sent_order(standin, music)
    last_b = len(order) - 1 - order[::-1].index("b")
    assert last_b < len(order) - limit, order
    turns = order[settled + limit:last_b + 1]
    assert all(len(set(turns[i:i + limit + 1])) == 2 for i in range(len(turns) - limit)), order
    _no_window_over(standin, limit, per_s)
