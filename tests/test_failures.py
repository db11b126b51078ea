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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.core.errors import UnknownJob
from kie_covers.runtime.connections import get_redis
from kie_covers.services.failures import count_failures, list_failures
from kie_covers.standin import KieStandin
from kie_covers.store.jobs import JobStore, Lifetimes
from tests.conftest import process_env
from tests.services import ROOT, StartBeat, StartWorker, WebProcess, wait_until

pytestmark = pytest.mark.e2e

APP_CALLBACK = "http://127.0.0.1:9/app-callback"


def _wait_for_retried_end(job_id: str, timeout_s: float) -> dict[str, Any]:
    """`get_cover` once the job has been retried at least once and ended again."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = get_cover(job_id)
        if (record["retry_rounds"] >= 1 and record["state"] in ("succeeded", "failed")) or \
                time.monotonic() >= deadline:
            return record
        time.sleep(0.1)


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
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/covers"

    def come_up(self) -> None:
        """From now on, take notices."""
        self.down.clear()


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
        app.server.shutdown()


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
        app.server.shutdown()


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
        app.server.shutdown()
