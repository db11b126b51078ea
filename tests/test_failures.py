"""Failed covers: the failure store, scheduled retries by a real beat, the CLI, app notices."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.config import keys
from kie_covers.core import errors
from kie_covers.core.errors import UnknownJob
from kie_covers.core.states import JobState
from kie_covers.runtime.connections import get_redis
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.services.failures import count_failures, list_failures
from kie_covers.standin import KieStandin
from kie_covers.store.jobs import JobStore, Lifetimes
from tests.conftest import STORE_DB, empty_db, process_env
from tests.services import (
    ROOT,
    StartBeat,
    StartWorker,
    WebProcess,
    serve_in_thread,
    stop_server,
    wait_until,
)

APP_CALLBACK = "http://127.0.0.1:9/app-callback"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an emptied database of the suite's Redis (the in-process store
    tests' own; test modules run one after another)."""
    with empty_db(redis_server, STORE_DB) as conn:
        yield conn


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    """A job store with short lifetimes and app notices off."""
    return JobStore(client, Lifetimes(result_ttl_s=60, failure_ttl_s=120, retry_base_s=5,
                                      retry_max_delay_s=40))


def _enqueue(store: JobStore, music_task_id: str) -> str:
    job_id, created = store.enqueue(uuid.uuid4().hex, music_task_id, APP_CALLBACK, 30, "q")
    assert created
    return job_id


def _fail(store: JobStore, job_id: str, error: errors.CoverError) -> None:
    """End job `job_id` with `error`."""
    assert store.finish(job_id, error=error) is not None


def _failed_job(store: JobStore, music_task_id: str, error: errors.CoverError) -> str:
    """A new job of `music_task_id`, ended with `error`."""
    job_id = _enqueue(store, music_task_id)
    _fail(store, job_id, error)
    return job_id


def _rows(client: redis.Redis, job_id: str, kind: str, code: object) -> list[bool]:
    """Whether `job_id` is in: all failures, its kind's, its code's, the retry schedule."""
    return [client.zscore(key, job_id) is not None
            for key in (keys.FAILURES, keys.failures_by_kind(kind),
                        keys.failures_by_code(code), keys.RETRY_DUE)]


def test_a_music_task_keeps_one_failure_row_its_newest_jobs(
    store: JobStore, client: redis.Redis
) -> None:
    music = uuid.uuid4().hex
    # Given a music task whose job failed (retryable: on the retry schedule too)
    first = _failed_job(store, music, errors.UpstreamError("boom", 502))
    assert _rows(client, first, "upstream", 502) == [True] * 4
    # When it is enqueued again: a new job, and the old one leaves every index at once
    second = _enqueue(store, music)
    assert second != first
    assert _rows(client, first, "upstream", 502) == [False] * 4
    assert store.failures.count() == 0 and store.failures.newest() == []
    old = store.get(first)
    assert old is not None and old.state is JobState.FAILED  # still readable by id
    # When the new job fails too: one row, the newest, of its own kind and code
    _fail(store, second, errors.NotFound("no such music", 404))
    assert [j.job_id for j in store.failures.newest()] == [second]
    assert store.failures.count() == 1 and store.failures.count(code=404) == 1
    assert store.failures.count("upstream") == 0 and store.failures.count(code=502) == 0
    # Then the old job cannot be retried (its music task's row is the newer job's)...
    assert store.failures.requeue(first, 30) == "superseded"
    # ...the newest can, and failing again still leaves one row
    assert store.failures.requeue(second, 30) == "ok"
    assert store.failures.count() == 0
    _fail(store, second, errors.UpstreamError("boom", 500))
    assert [j.job_id for j in store.failures.newest()] == [second]
    assert store.failures.count() == 1 and store.failures.count(code=404) == 0
    # And forgetting it leaves none, the old record untouched
    newest = store.get(second)
    assert newest is not None
    store.failures.forget(newest)
    assert store.failures.count() == 0 and store.get(first) is not None


def test_a_raw_messages_job_takes_its_music_tasks_row_only_from_a_failed_job(
    store: JobStore, client: redis.Redis
) -> None:
    # Given a music task whose own job failed, and a raw message's job for it (begun
    # with an id of its own: it does not own the music task)
    music = uuid.uuid4().hex
    own = _failed_job(store, music, errors.UpstreamError("boom", 500))
    raw = uuid.uuid4().hex
    assert store.begin(raw, music, APP_CALLBACK, 30, "q") is not None
    assert client.get(keys.music(music)) == own
    # When the raw job fails: it is the newest failure, the only row
    _fail(store, raw, errors.GenerationFailed("bad", 501))
    assert [j.job_id for j in store.failures.newest()] == [raw]
    assert _rows(client, own, "upstream", 500) == [False] * 4
    assert client.get(keys.music(music)) == raw
    # Given another music task whose own job is live, and a raw job for it that fails
    live_music = uuid.uuid4().hex
    live = _enqueue(store, live_music)
    stray = uuid.uuid4().hex
    assert store.begin(stray, live_music, APP_CALLBACK, 30, "q") is not None
    _fail(store, stray, errors.UpstreamError("boom", 500))
    # Then that failure gets no row (the live job speaks for its music task)
    assert store.failures.count() == 1 and _rows(client, stray, "upstream", 500) == [
        False] * 4
    # And when the live job fails, it has the row
    _fail(store, live, errors.UpstreamError("boom", 500))
    assert sorted(j.job_id for j in store.failures.newest()) == sorted([raw, live])


def test_rows_from_before_one_row_per_music_task_are_tidied_as_they_are_met(
    store: JobStore, client: redis.Redis
) -> None:
    # Given two failed jobs of one music task both indexed (as stored before the rule)
    music = uuid.uuid4().hex
    older = _failed_job(store, music, errors.UpstreamError("boom", 502))
    newer = _failed_job(store, music, errors.UpstreamError("boom", 502))
    score = time.time() * 1000 - 1000
    for key in (keys.FAILURES, keys.failures_by_kind("upstream"),
                keys.failures_by_code(502), keys.RETRY_DUE):
        client.zadd(key, {older: score})
    assert store.failures.count() == 2
    # When the failures are listed: only the music task's own job...
    assert [j.job_id for j in store.failures.newest()] == [newer]
    # Then the older row has left every index, so counts agree with the list
    assert _rows(client, older, "upstream", 502) == [False] * 4
    assert store.failures.count() == 1 and store.failures.count("upstream") == 1
    assert store.failures.count(code=502) == 1
    assert [j.job_id for j in store.failures.due_for_retry(time.time() + 3600)] == [newer]


def _wait_for_retried_end(job_id: str, timeout_s: float) -> dict[str, Any]:
    """`get_cover` once the job has been retried at least once and ended again."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = get_cover(job_id)
        if (record["retry_rounds"] >= 1 and record["state"] in ("succeeded", "failed")) or \
                time.monotonic() >= deadline:
            return record
        time.sleep(0.1)


@pytest.mark.e2e
def test_an_outage_is_recorded_and_healed_by_scheduled_retries_without_a_command(
    standin: KieStandin, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    # Given Kie fails every generation with 500
    standin.inject("generate", "500", times=None)
    worker = start_worker(COVERS_MAX_ATTEMPTS="2", COVERS_RETRY_BASE="1")
    task_ids = [uuid.uuid4().hex for _ in range(4)]
    job_ids = [enqueue_cover(t, APP_CALLBACK, queue=worker.queue) for t in task_ids]
    records = [wait_for_cover(j, timeout_s=30) for j in job_ids]
    # Then each job fails once, recorded with its kind, code and that a retry can help
    assert {r["error"]["kind"] for r in records} == {"upstream"}
    assert all(r["error"]["retryable"] and r["error"]["code"] == 500 for r in records)
    listed = list_failures(kind="upstream")
    assert sorted(r["job_id"] for r in listed) == sorted(job_ids)
    assert count_failures() == 4 and count_failures(code=500) == 4
    assert all(r["first_failed_at"] and r["last_failed_at"] for r in listed)
    # When the outage ends, with two beat processes running by mistake
    standin.clear_faults()
    for _ in range(2):
        start_beat(COVERS_QUEUE=worker.queue, COVERS_RETRY_INTERVAL="0.5")
    # Then every cover is made with no command typed, each music task paid once,
    # each job retried once (not twice), under its own job id
    healed = [_wait_for_retried_end(j, timeout_s=40) for j in job_ids]
    assert [r["state"] for r in healed] == ["succeeded"] * 4
    assert standin.paid() == {t: 1 for t in task_ids}
    assert [r["retry_rounds"] for r in healed] == [1] * 4
    assert count_failures() == 0


@pytest.mark.e2e
def test_a_never_retry_failure_is_not_retried_on_schedule(
    standin: KieStandin, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    worker = start_worker(COVERS_RETRY_BASE="0.2")
    start_beat(COVERS_QUEUE=worker.queue, COVERS_RETRY_INTERVAL="0.5")
    job_id = enqueue_cover("notfound" + uuid.uuid4().hex, APP_CALLBACK, queue=worker.queue)
    assert wait_for_cover(job_id, timeout_s=20)["error"]["kind"] == "not_found"
    time.sleep(3)  # several beat rounds
    record = get_cover(job_id)
    assert record["state"] == "failed" and record["retry_rounds"] == 0
    assert standin.counts()["generate"] == 1


def covers(*args: str) -> subprocess.CompletedProcess[str]:
    # check=False: the test reads the exit code itself.
    return subprocess.run([sys.executable, "-m", "kie_covers.worker.cli", *args], check=False,
                          cwd=ROOT, env=process_env(), capture_output=True, text=True,
                          timeout=60)


@pytest.mark.e2e
def test_the_cli_lists_filters_retries_and_forgets(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    # Given three failures of different kinds
    worker = start_worker(COVERS_MAX_ATTEMPTS="1", COVERS_RETRY_BASE="3600")
    missing = enqueue_cover("notfound" + uuid.uuid4().hex, APP_CALLBACK, queue=worker.queue)
    wait_for_cover(missing, timeout_s=20)
    broken = enqueue_cover("genfail" + uuid.uuid4().hex, APP_CALLBACK, queue=worker.queue)
    wait_for_cover(broken, timeout_s=20)
    standin.inject("generate", "500", times=1)
    flaky_task = uuid.uuid4().hex
    flaky = enqueue_cover(flaky_task, APP_CALLBACK, queue=worker.queue)
    assert wait_for_cover(flaky, timeout_s=20)["state"] == "failed"
    # The table lists them newest first
    table = covers("failures")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert [flaky, broken, missing] == [
        next(j for j in (flaky, broken, missing) if line.startswith(j))
        for line in lines[2:5]]
    assert "3 shown of 3" in table.stdout
    # Filters by kind and code, and JSON
    assert json.loads(covers("failures", "--kind", "not_found", "--json").stdout)[0][
        "job_id"] == missing
    by_code = json.loads(covers("failures", "--code", "404", "--json").stdout)
    assert [r["job_id"] for r in by_code] == [missing]
    # (the generation failure's code is 500 from a poll or 501 from a callback)
    assert flaky in covers("failures", "--code", "500").stdout
    # Retry by id: the flaky one succeeds now, paid once
    retried = covers("retry", flaky)
    assert retried.returncode == 0 and "1 queued again" in retried.stdout
    assert wait_for_cover(flaky, timeout_s=20)["state"] == "succeeded"
    assert standin.paid()[flaky_task] == 1
    # Retry of a job that is not failed is refused, with exit code 1
    assert covers("retry", flaky).returncode == 1
    # Retry by kind, and of all retryable ones
    assert "1 queued again" in covers("retry", "--kind", "generation_failed").stdout
    wait_for_cover(broken, timeout_s=20)
    assert "1 queued again" in covers("retry", "--all-retryable").stdout
    assert covers("retry").returncode == 2
    # Bad filters are refused by the web's rules, each named, nothing listed or queued
    bad = covers("retry", "--kind", "Not_found!", "--code", "5x")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "covers retry: --kind: must be an error kind such as upstream (1 to 64 of a-z and _)",
        "covers retry: --code: must be an API code such as 500, or none"]
    assert covers("failures", "--code", "five").returncode == 2
    # Forget removes the record
    wait_for_cover(broken, timeout_s=20)
    assert "1 forgotten" in covers("forget", missing).stdout
    with pytest.raises(UnknownJob):
        get_cover(missing)
    assert missing not in covers("failures").stdout


class _App:
    """A tiny app endpoint on loopback; it answers 503 while it is down (`come_up` ends that)."""

    def __init__(self, key: str, *, down: bool) -> None:
        self.down = threading.Event()
        if down:
            self.down.set()
        self.key = key
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0
        self.refused_jobs: set[str] = set()  # whose notices were refused at least once
        self.bad_signatures = 0
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                notice = json.loads(body)
                if app.down.is_set():
                    app.refused += 1
                    app.refused_jobs.add(notice["jobId"])
                    self.send_response(503)
                    self.end_headers()
                    return
                stamp = self.headers.get("X-Webhook-Timestamp", "")
                expected = base64.b64encode(hmac.new(
                    app.key.encode(), f"{notice['data']['taskId']}.{stamp}".encode(),
                    hashlib.sha256).digest()).decode()
                if not hmac.compare_digest(expected, self.headers.get(
                        "X-Webhook-Signature", "")):
                    app.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                app.accepted.append(notice)
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        serve_in_thread(self.server)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/covers"

    def come_up(self) -> None:
        """From now on, take notices."""
        self.down.clear()


@pytest.mark.e2e
def test_the_app_gets_one_signed_notice_per_finished_job_even_after_being_down(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    # Given the app's endpoint is down
    app = _App(key="app-secret-123", down=True)
    try:
        worker = start_worker(COVERS_APP_WEBHOOK_KEY=app.key, COVERS_NOTIFY_MAX_AGE="60")
        ok = [enqueue_cover(uuid.uuid4().hex, app.url, queue=worker.queue) for _ in range(3)]
        bad = enqueue_cover("notfound" + uuid.uuid4().hex, app.url, queue=worker.queue)
        # When it comes up only after it has refused every job's notice
        wait_until(lambda: app.refused_jobs == {*ok, bad}, 40, 0.1,
                   "every notice refused while the app is down")
        app.come_up()
        # Then each finished job is announced exactly once, signed
        wait_until(lambda: len(app.accepted) >= 4, 40, 0.1, "four notices")
        time.sleep(1.0)
        assert app.bad_signatures == 0
        by_job = {n["jobId"]: n for n in app.accepted}
        assert len(app.accepted) == 4 and set(by_job) == {*ok, bad}
        for job_id in ok:
            assert by_job[job_id]["code"] == 200 and by_job[job_id]["state"] == "succeeded"
            assert by_job[job_id]["data"]["images"] == get_cover(job_id)["images"]
            assert get_cover(job_id)["notified_at"] is not None
        assert by_job[bad]["state"] == "failed" and by_job[bad]["error"]["kind"] == "not_found"
    finally:
        stop_server(app.server)


@pytest.mark.e2e
def test_a_notice_the_app_never_takes_is_given_up_and_recorded(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    app = _App(key="k", down=True)
    worker = start_worker(COVERS_NOTIFY_MAX_AGE="1.5")
    job_id = enqueue_cover(uuid.uuid4().hex, app.url, queue=worker.queue)
    try:
        wait_until(lambda: get_cover(job_id)["notice_error"] is not None, 30, 0.1,
                   "the notice to be given up")
        assert "HTTP 503" in get_cover(job_id)["notice_error"]
        assert get_cover(job_id)["state"] == "succeeded"
        assert app.refused >= 2
    finally:
        stop_server(app.server)


@pytest.mark.e2e
def test_a_notice_whose_process_died_before_sending_it_is_sent_once_after_its_lease(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    # Given a worker with 1 s notice timeouts: the notice lock lasts 3 s, its lease 8 s
    app = _App(key="k2", down=False)
    worker = start_worker(COVERS_APP_WEBHOOK_KEY=app.key, COVERS_NOTIFY_TIMEOUT="1",
                          COVERS_NOTIFY_MAX_AGE="60")
    try:
        # When a process ends a job (taking its notice) and dies before sending it
        store = JobStore(get_redis(), Lifetimes(result_ttl_s=600, failure_ttl_s=600,
                                                notice_lease_s=8.0, notice_lock_s=3.0))
        job_id, _ = store.enqueue(str(uuid.uuid4()), uuid.uuid4().hex, app.url, 600,
                                  worker.queue)
        ending_at = time.monotonic()  # before the lease starts, however slow finish is
        ended = store.finish(job_id, images=["https://cdn.example/a.png"])
        assert ended is not None and ended.notice_locked
        # Then nobody sends it while the lease runs, and a worker sends it once after
        time.sleep(2.0)
        assert app.accepted == []
        wait_until(lambda: len(app.accepted) >= 1, 30, 0.1, "the notice from the due set")
        assert time.monotonic() - ending_at >= 7.5
        time.sleep(1.0)
        assert [n["jobId"] for n in app.accepted] == [job_id]
        assert app.accepted[0]["data"]["images"] == ["https://cdn.example/a.png"]
        assert get_cover(job_id)["notified_at"] is not None
    finally:
        stop_server(app.server)


def test_failures_filter_by_time_newest_first(store: JobStore, client: redis.Redis) -> None:
    ids = [_enqueue(store, f"timed-{n}") for n in range(3)]
    for job_id in ids:
        _fail(store, job_id, errors.UpstreamError("down", 500))
    # Scores are the failures' times (ms); spread them so the bounds are exact.
    for n, job_id in enumerate(ids):
        client.zadd(keys.FAILURES, {job_id: 1_700_000_000_000 + n * 60_000})
        client.zadd(keys.failures_by_kind("upstream"), {job_id: 1_700_000_000_000 + n * 60_000})
    store.failures.failure_ttl_s = 10**10  # keep the old scores from being pruned
    since, until = 1_700_000_030.0, 1_700_000_150.0
    assert [j.job_id for j in store.failures.newest(since=since)] == [ids[2], ids[1]]
    assert [j.job_id for j in store.failures.newest(until=until)] == [ids[2], ids[1], ids[0]]
    assert [j.job_id for j in store.failures.newest(until=1_700_000_090.0)] == [ids[1], ids[0]]
    assert [j.job_id for j in store.failures.newest("upstream", since=since,
                                                    until=1_700_000_090.0)] == [ids[1]]
    assert store.failures.count(since=since) == 2
    assert store.failures.count("upstream", 500, since=since) == 2
    assert store.failures.count(until=1_700_000_000.0) == 1
