"""Poison broker entries and a full Redis stop no worker.

Real worker processes, real Redis servers and the stand-in: poison entries pushed
straight onto a worker's queue are quarantined (listed by ``covers quarantine``,
counted in the metrics) while the worker goes on consuming; a private Redis held at
``maxmemory`` for 10 s pauses the workers, which resume by themselves, end every job
and pay each once, while ``enqueue_cover`` says Redis is full.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from kie_covers import enqueue_cover, wait_for_cover
from kie_covers.config import keys
from kie_covers.runtime.messages import send_job
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.standin import KieStandin
from kie_covers.store.jobs import JobStore, Lifetimes
from tests.conftest import API_KEY, process_env
from tests.services import ROOT, StartWorker, WorkerProcess, wait_until

pytestmark = pytest.mark.e2e

APP_CALLBACK = "http://127.0.0.1:9/app-callback"
#: Text inside every poison entry: it must never reach a log line.
MARKER = "poison-marker-" + uuid.uuid4().hex[:8]


def good_envelope(redis_url: str) -> dict[str, object]:
    """A real task message, as kombu leaves it on a Redis queue."""
    scratch = "scratch-" + uuid.uuid4().hex[:8]
    send_job("job-" + MARKER, "music-" + MARKER, APP_CALLBACK, queue=scratch)
    with redis.Redis.from_url(redis_url) as admin:
        raw = admin.rpop(scratch)
        admin.delete(scratch, f"_kombu.binding.{scratch}")
    assert isinstance(raw, bytes)
    envelope = json.loads(raw)
    assert isinstance(envelope, dict)
    return envelope


def poison_entries(envelope: dict[str, object]) -> dict[str, tuple[bytes, str]]:
    """Each kind of poison: name -> (the entry, the reason it must be quarantined for)."""

    def variant(**changes: object) -> bytes:
        return json.dumps({**envelope, **changes}).encode()

    properties = dict(envelope["properties"])  # type: ignore[call-overload]
    del properties["delivery_tag"]
    body = base64.b64encode(f"not json {MARKER}".encode()).decode()
    return {
        "not json": (f"not json {MARKER} {API_KEY}".encode(), "not_json"),
        "not utf-8": (b"\xff\xfe" + MARKER.encode(), "not_json"),
        # five base64 characters: one more than a multiple of four, never valid
        "bad base64 body": (variant(body="AAAAA"), "bad_body_encoding"),
        "unknown content type": (variant(**{"content-type": "application/x-unknown"}),
                                 "content_type"),
        "body not its content type": (variant(body=body), "bad_body"),
        "an array": (json.dumps([MARKER, 2]).encode(), "not_an_envelope"),
        "no properties": (json.dumps({"body": MARKER}).encode(), "not_an_envelope"),
        "no delivery tag": (variant(properties=properties), "not_an_envelope"),
        "no task header": (variant(headers=None), "not_a_task"),
    }


def covers_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``covers ARGS`` and return what it printed (it must exit 0)."""
    done = subprocess.run([sys.executable, "-m", "kie_covers.worker.cli", *args],
                          cwd=ROOT, env=env or process_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_each_kind_of_poison_is_quarantined_and_the_worker_goes_on(
    standin: KieStandin, start_worker: StartWorker, redis_server: RedisServer,
) -> None:
    worker = start_worker()
    assert worker.process is not None
    pid = worker.process.pid
    entries = poison_entries(good_envelope(redis_server.url))
    admin = redis.Redis.from_url(redis_server.url)
    for raw, _reason in entries.values():
        admin.lpush(worker.queue, raw)
    wait_until(lambda: admin.llen(keys.QUARANTINE) >= len(entries), 30, 0.1,
               "every poison entry in the quarantine")

    # The worker is the same process, and still takes work: a good job after the poison
    job_id = enqueue_cover(uuid.uuid4().hex, APP_CALLBACK, queue=worker.queue)
    assert wait_for_cover(job_id, timeout_s=60)["state"] == "succeeded"
    assert worker.process.poll() is None and worker.process.pid == pid

    listed = json.loads(covers_cli("quarantine", "--json", "--limit", "100"))
    assert len(listed) == len(entries)
    expected = sorted(reason for _raw, reason in entries.values())
    assert sorted(entry["reason"] for entry in listed) == expected
    # Entries kombu could not read name the queue they were popped from; messages
    # Celery refused name the queue they were sent to (the scratch queue they came from)
    assert all(entry["queue"] == worker.queue or entry["queue"].startswith("scratch-")
               for entry in listed)
    # Text that is no JSON is kept byte for byte
    raws = {base64.b64decode(entry["raw"]) for entry in listed}
    assert entries["not json"][0] in raws
    assert all(entry["size"] > 0 and entry["at"] and entry["detail"] for entry in listed)

    table = covers_cli("quarantine")
    assert f"{len(entries)} shown of {len(entries)}" in table
    assert "not_json" in table and API_KEY not in table  # the preview is masked

    counters: dict[bytes, bytes] = admin.hgetall(keys.METRIC_COUNTERS)  # type: ignore[assignment]
    counted: dict[str, int] = {}
    for field, value in counters.items():
        name, _, labels = field.decode().partition("|")
        if name == "quarantined_total":
            counted[labels.removeprefix("reason=")] = int(value)
    assert counted == {reason: expected.count(reason) for reason in set(expected)}

    log = worker.log()
    assert log.count("quarantined:") == len(entries)  # logged once each
    assert MARKER not in log and "Unrecoverable" not in log

    assert "removed" in covers_cli("quarantine", "--clear")
    assert admin.llen(keys.QUARANTINE) == 0


#: Seconds the private Redis is kept full.
FULL_FOR_S = 10.0
#: Jobs in flight when Redis fills up.
JOBS = 6

ENQUEUE = """
import json, sys
from kie_covers import enqueue_cover
out = {}
for task_id in sys.argv[2:]:
    try:
        out[task_id] = ["ok", enqueue_cover(task_id, sys.argv[1])]
    except Exception as error:
        out[task_id] = ["error", type(error).__name__, str(error)]
print(json.dumps(out))
"""


#: POST /v1/covers through the producer API's WSGI app, in a process on the env's Redis.
HTTP_CREATE = """
import io, json, sys
from wsgiref.util import setup_testing_defaults
from kie_covers.config import get_settings
from kie_covers.worker.http_api import ProducerApi
body = json.dumps({"taskId": sys.argv[2], "callBackUrl": sys.argv[1]}).encode()
environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/covers", "REMOTE_ADDR": "127.0.0.1",
           "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
           "wsgi.input": io.BytesIO(body)}
setup_testing_defaults(environ)
answer = {}
def start_response(status, headers, exc_info=None):
    answer.update(status=status, headers=dict(headers))
answer["body"] = json.loads(b"".join(ProducerApi(get_settings())(environ, start_response)))
print(json.dumps(answer))
"""


def http_create_on(env: dict[str, str], task_id: str) -> dict[str, Any]:
    """POST /v1/covers for `task_id` to the producer API, in a process on `env`'s Redis."""
    done = subprocess.run([sys.executable, "-c", HTTP_CREATE, APP_CALLBACK, task_id],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def enqueue_on(env: dict[str, str], *task_ids: str) -> dict[str, list[str]]:
    """`enqueue_cover` for each music task, in a producer process on `env`'s Redis."""
    done = subprocess.run([sys.executable, "-c", ENQUEUE, APP_CALLBACK, *task_ids],
                          cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def assert_refused_as_full(env: dict[str, str], task_id: str) -> None:
    """`enqueue_cover` raises StoreFull, and the HTTP API answers 503 store-full."""
    refused = enqueue_on(env, task_id)[task_id]
    assert refused[:2] == ["error", "StoreFull"] and "Redis is full" in refused[2]
    answer = http_create_on(env, task_id)
    assert answer["status"].startswith("503") and answer["headers"]["Retry-After"] == "5"
    assert answer["body"]["type"] == "urn:kie-covers:problem:store-full", answer


def assert_succeeded_paid_once(store: JobStore, standin: KieStandin,
                               jobs: dict[str, str]) -> None:
    """Every job (id -> music task) succeeded, its music task paid exactly once."""
    paid = standin.paid()
    for job_id, task in jobs.items():
        record = store.get(job_id)
        assert record is not None and record.state == "succeeded", record
        assert paid.get(task) == 1, (task, paid.get(task))


def fill(admin: redis.Redis) -> None:
    """Fill the private Redis with filler keys and cap its memory below what it holds,
    under noeviction, until it refuses a write."""
    for n in range(80):
        admin.set(f"filler:{n}", b"x" * 100_000)
    admin.config_set("maxmemory-policy", "noeviction")
    margin = 2_000_000
    while True:
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", max(1, used - margin))
        try:
            admin.set("probe", b"x" * 1000)
        except redis.exceptions.OutOfMemoryError:
            return
        margin *= 2


def test_a_full_redis_pauses_workers_and_every_job_ends_paid_once(
    standin: KieStandin, start_worker: StartWorker, tmp_path: Path, run_dir: Path,
) -> None:
    private = RedisServer(tmp_path / "full-redis", appendonly=False).start()
    workers: list[WorkerProcess] = []
    try:
        env = process_env(REDIS_URL=private.url, COVERS_QUEUE="covers-full")
        queue = "covers-full"
        workers += [start_worker(queue=queue, REDIS_URL=private.url) for _ in range(2)]
        pids = [w.process.pid for w in workers if w.process is not None]
        admin = redis.Redis.from_url(private.url)
        store = JobStore(redis.Redis.from_url(private.url, decode_responses=True),
                         Lifetimes(result_ttl_s=3600, failure_ttl_s=3600))
        # Generates answer after 1 s, so runs are in flight when Redis fills
        standin.inject("generate", "slow", None, delay_s=1.0)
        tasks = [uuid.uuid4().hex for _ in range(JOBS)]
        jobs = {outcome[1]: task for task, outcome in enqueue_on(env, *tasks).items()}
        assert len(jobs) == JOBS
        wait_until(lambda: standin.counts()["generate"] >= 1, 30, 0.05, "a generate call")

        fill(admin)
        # A worker started while Redis is full (a supervisor restarting one) stays up,
        # and gets ready once Redis has room (start() returns then)
        newcomer = WorkerProcess(f"full-{uuid.uuid4().hex[:6]}",
                                 process_env(REDIS_URL=private.url, COVERS_QUEUE=queue),
                                 run_dir)
        workers.append(newcomer)
        starting = threading.Thread(target=newcomer.start, daemon=True)
        starting.start()
        late = uuid.uuid4().hex
        assert_refused_as_full(env, late)
        time.sleep(FULL_FOR_S)
        assert all(w.process is not None and w.process.poll() is None for w in workers)
        assert "ready." not in newcomer.log()

        admin.config_set("maxmemory", 0)
        admin.delete(*[f"filler:{n}" for n in range(80)], "probe")
        freed = time.monotonic()

        def ended() -> bool:
            records = [store.get(job_id) for job_id in jobs]
            return all(r is not None and r.state in ("succeeded", "failed") for r in records)

        wait_until(ended, 120, 0.1, "every job to end after Redis had room again")
        recovery = time.monotonic() - freed
        starting.join(60)
        # It waited (its first writes, heartbeat or consumer, were refused), said why,
        # and got ready only once Redis had room
        assert "ready." in newcomer.log() and "Redis is full" in newcomer.log()
        print(f"\nfull Redis for {FULL_FOR_S:.0f}s: every job ended {recovery:.1f}s after "
              "memory was freed")

        assert_succeeded_paid_once(store, standin, jobs)
        # Same worker processes, alive; the pause was logged with its cause
        assert [w.process.pid for w in workers[:2] if w.process is not None] == pids
        assert all(w.process is not None and w.process.poll() is None for w in workers)
        logs = "".join(w.log() for w in workers)
        assert "Redis is full" in logs and "Unrecoverable" not in logs
        # The producer refused during the full period can enqueue again now
        again = enqueue_on(env, late)[late]
        assert again[0] == "ok"
    finally:
        for worker in workers:  # before their Redis goes
            worker.stop()
        private.stop()
