"""Celery's view is the job's view: one task per job, in the job's state, as Celery's
own event receiver, real Flower (its ``/api/tasks``) and ``AsyncResult`` see it.

One worker (started as ``covers worker`` starts it: heartbeats on, task events off),
one Flower (which turns the worker's task events on, as it does for users), one
``EventReceiver`` feeding Celery's event ``State`` (what Flower does with events) and
the session's ``covers web``, shared by the module's cases. The waiting case runs
last: a 455 pauses every generate.
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery.events.state import State
from celery.exceptions import Retry
from celery.result import AsyncResult

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.config import keys
from kie_covers.core.errors import GenerationFailed, NotFound
from kie_covers.runtime.app import app
from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.runtime.task_view import JobWaits, iso
from kie_covers.services.failures import retry_jobs
from kie_covers.standin import KieStandin
from kie_covers.store.shown_state import ShownState
from tests.conftest import STORE_DB, empty_db, process_env
from tests.services import (
    ROOT,
    WebProcess,
    WorkerProcess,
    answers,
    stop_group,
    wait_until,
)

FLOWER_USER = "ops"
FLOWER_PASSWORD = secrets.token_hex(8)


class EventLog:
    """Every event on the broker, as Celery's ``EventReceiver`` hands them to a
    monitor, kept in order and fed to Celery's event ``State`` as Flower does."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.state = State()
        #: Each task's state in `state` after each of its events, in order.
        self.states: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, name="event-log", daemon=True)

    def _run(self) -> None:
        with app.connection_for_read() as connection:
            self.receiver = app.events.Receiver(connection, handlers={"*": self._on})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)
            self.state.event(event)
            task = self.state.tasks.get(event.get("uuid", ""))
            if task is not None:
                self.states.setdefault(task.uuid, []).append(str(task.state))

    def of(self, job_id: str) -> list[dict[str, Any]]:
        """The task events of job `job_id`, in the order received."""
        with self.lock:
            return [e for e in self.events if e.get("uuid") == job_id]

    def types(self, job_id: str) -> list[str]:
        return [e["type"] for e in self.of(job_id)]

    def task_state(self, job_id: str) -> str | None:
        with self.lock:
            task = self.state.tasks.get(job_id)
            return None if task is None else str(task.state)

    def seen(self, kind: str, hostname: str) -> bool:
        with self.lock:
            return any(e["type"] == kind and e.get("hostname") == hostname
                       for e in self.events)

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=10)


class MonitoredWorker(WorkerProcess):
    """A worker started the way ``covers worker`` starts one: heartbeats and gossip on,
    so a monitor's ``enable_events`` reaches it (task events stay off until then)."""

    options = ("--without-mingle",)


class Flower:
    """``celery -A kie_covers.worker flower`` on a loopback port, with basic auth (Flower
    2 serves its API only to authenticated clients unless told otherwise)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.env = env
        self.log_path = log_dir / f"flower-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Flower:
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "kie_covers.worker", "flower",
             f"--port={self.port}", "--address=127.0.0.1",
             f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_until(self._up, 60, 0.2, "Flower to answer")
        return self

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"flower exited:\n{self.log_path.read_text()[-3000:]}")
        return answers(f"http://127.0.0.1:{self.port}/healthcheck")

    def tasks(self) -> dict[str, dict[str, Any]]:
        """``GET /api/tasks``: Flower's view of every task, by task id."""
        answer = requests.get(f"http://127.0.0.1:{self.port}/api/tasks",
                              auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=5)
        answer.raise_for_status()
        tasks: dict[str, dict[str, Any]] = answer.json()
        return tasks

    def task(self, job_id: str) -> dict[str, Any]:
        return self.tasks().get(job_id, {})

    def stop(self) -> None:
        stop_group(self.process, 15)


@dataclass
class Stage:
    """What the module's cases share."""

    standin: KieStandin
    worker: MonitoredWorker
    flower: Flower
    events: EventLog
    web: WebProcess
    hostname: str = field(default="")

    def enqueue(self, music_task_id: str) -> str:
        return enqueue_cover(music_task_id, "http://127.0.0.1:9/cb", queue=self.worker.queue)


@pytest.fixture(scope="module")
def stage(standin_server: KieStandin, redis_server: RedisServer, run_dir: Path,
          web: WebProcess) -> Iterator[Stage]:
    standin_server.reset()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    events = EventLog()
    events.thread.start()
    name = f"view{os.getpid()}"
    # Polls as by default (30 s): a job here ends by Kie's callback, in `covers web`.
    env = process_env(COVERS_QUEUE=f"covers-{name}", KIE_POLL_INTERVAL="30")
    worker = MonitoredWorker(name, env, run_dir)
    flower: Flower | None = None
    try:
        wait_until(lambda: events.receiver is not None, 10, 0.05, "the event receiver")
        worker.start()
        hostname = f"{name}@{os.uname().nodename}"
        # Once the receiver hears the worker (online, or its heartbeat every 2 s), it
        # is subscribed.
        wait_until(lambda: events.seen("worker-online", hostname)
                   or events.seen("worker-heartbeat", hostname), 30, 0.1,
                   "the worker's first event")
        flower = Flower(env, run_dir).start()
        # Flower turns task events on (its enable_events broadcast); the worker then
        # renews its mark, which tells `covers web` to send the events of its endings.
        with redis.Redis.from_url(redis_server.url) as client:
            wait_until(lambda: client.exists(keys.TASK_EVENTS), 30, 0.1,
                       "task events on (Flower's enable_events)")
        yield Stage(standin_server, worker, flower, events, web, hostname)
    finally:
        if flower is not None:
            flower.stop()
        worker.stop()
        events.stop()
        standin_server.reset()


def _has_event(stage: Stage, job_id: str, kind: str) -> bool:
    return kind in stage.events.types(job_id)


def _flower_state(stage: Stage, job_id: str, state: str) -> bool:
    return stage.flower.task(job_id).get("state") == state


@pytest.mark.e2e
def test_a_job_ended_by_callback_in_covers_web_succeeds_there_with_its_images(
    stage: Stage,
) -> None:
    # Kie's callback comes 3 s after the cover is done: meanwhile the job is SUBMITTED.
    stage.standin.set_callback_mode("delay", 3.0)
    job_id = stage.enqueue(uuid.uuid4().hex)
    wait_until(lambda: AsyncResult(job_id, app=app).state == "SUBMITTED", 20, 0.05,
               "AsyncResult to show SUBMITTED")
    waiting = AsyncResult(job_id, app=app).info
    assert waiting["waiting_for"] == "cover" and waiting["state"] == "submitted"
    assert datetime.fromisoformat(waiting["resumes_at"]).timestamp() > time.time() + 10
    record = wait_for_cover(job_id, timeout_s=30)
    assert record["state"] == "succeeded" and record["images"]
    assert record["polls"] == 0  # ended by the callback, not by a poll

    wait_until(lambda: "task-succeeded" in stage.events.types(job_id), 20, 0.05,
               "the task-succeeded event")
    wait_until(lambda: _flower_state(stage, job_id, "SUCCESS"), 20, 0.1, "Flower: SUCCESS")
    [submitted] = [e for e in stage.events.of(job_id) if e["type"] == "task-submitted"]
    assert submitted["hostname"] == stage.hostname and submitted["reason"] == "cover"
    assert "submitted" in submitted["result"].lower()
    [succeeded] = [e for e in stage.events.of(job_id) if e["type"] == "task-succeeded"]
    # Sent by `covers web`, the process that ended the job, not by the worker.
    assert succeeded["hostname"] != stage.hostname
    assert succeeded["pid"] != stage.worker.process.pid  # type: ignore[union-attr]
    assert all(url in succeeded["result"] for url in record["images"])
    assert stage.events.types(job_id).index("task-submitted") < \
        stage.events.types(job_id).index("task-succeeded")
    assert stage.events.task_state(job_id) == "SUCCESS"
    shown = stage.flower.task(job_id)
    assert shown["name"] == "covers.generate_cover"
    assert all(url in shown["result"] for url in record["images"])
    result = AsyncResult(job_id, app=app)
    assert result.state == "SUCCESS" and result.info["images"] == record["images"]


@pytest.mark.e2e
def test_failed_jobs_are_failures_with_their_typed_error_whoever_ends_them(
    stage: Stage,
) -> None:
    stage.standin.set_callback_mode("send")
    by_callback = stage.enqueue("genfail" + uuid.uuid4().hex)  # Kie's failure callback
    in_worker = stage.enqueue("notfound" + uuid.uuid4().hex)  # 404 to the generate
    for job_id in (by_callback, in_worker):
        assert wait_for_cover(job_id, timeout_s=30)["state"] == "failed"
    for job_id in (by_callback, in_worker):
        wait_until(functools.partial(_has_event, stage, job_id, "task-failed"), 20, 0.05,
                   "the task-failed event")
        wait_until(functools.partial(_flower_state, stage, job_id, "FAILURE"), 20, 0.1,
                   "Flower: FAILURE")
        assert "task-succeeded" not in stage.events.types(job_id)
        assert stage.events.task_state(job_id) == "FAILURE"

    [failed] = [e for e in stage.events.of(by_callback) if e["type"] == "task-failed"]
    assert failed["hostname"] != stage.hostname  # sent by `covers web`
    shown = stage.flower.task(by_callback)["exception"]
    for part in ("GenerationFailed(", "kind='generation_failed'", "code=501",
                 "retryable=True", "message="):
        assert part in failed["exception"] and part in shown
    error = AsyncResult(by_callback, app=app).info
    assert isinstance(error, GenerationFailed)
    assert error.to_dict() == get_cover(by_callback)["error"]

    # Queued again (a retry round): monitors see it retried and follow its new runs.
    assert [outcome.result for outcome in retry_jobs([by_callback])] == ["ok"]
    wait_until(lambda: stage.events.types(by_callback).count("task-failed") == 2, 30, 0.05,
               "the retried job's second failure")
    types = stage.events.types(by_callback)
    again = types[types.index("task-failed") + 1:]
    assert "task-retried" in again and "task-submitted" in again[again.index("task-retried"):]
    # Celery's event state (Flower's): FAILURE, then RETRY, RECEIVED, STARTED,
    # SUBMITTED, FAILURE; a custom state alone could not have followed the FAILURE.
    states = [state for state, _ in itertools.groupby(stage.events.states[by_callback])]
    later = states[states.index("FAILURE") + 1:]
    assert [state for state in later if state in ("RETRY", "SUBMITTED", "FAILURE")] == [
        "RETRY", "SUBMITTED", "FAILURE"]
    wait_until(functools.partial(_flower_state, stage, by_callback, "FAILURE"), 20, 0.1,
               "Flower: FAILURE again")

    [failed] = [e for e in stage.events.of(in_worker) if e["type"] == "task-failed"]
    assert failed["hostname"] == stage.hostname  # the worker's own task-failed
    shown = stage.flower.task(in_worker)["exception"]
    for part in ("NotFound(", "kind='not_found'", "code=404", "retryable=False"):
        assert part in shown
    result = AsyncResult(in_worker, app=app)
    assert result.state == "FAILURE" and isinstance(result.info, NotFound)


@pytest.mark.e2e
def test_a_job_held_by_maintenance_is_waiting_with_its_reason_never_success(
    stage: Stage,
) -> None:
    # A 455 asking for 60 s: the job (and every generate) waits, in no worker's memory.
    stage.standin.inject("generate", "455", times=1, retry_after="60")
    job_id = stage.enqueue(uuid.uuid4().hex)
    wait_until(lambda: "task-waiting" in stage.events.types(job_id), 20, 0.05,
               "the task-waiting event")
    wait_until(lambda: _flower_state(stage, job_id, "WAITING"), 20, 0.1, "Flower: WAITING")
    [waiting] = [e for e in stage.events.of(job_id) if e["type"] == "task-waiting"]
    assert waiting["hostname"] == stage.hostname and waiting["reason"] == "maintenance"
    resumes = datetime.fromisoformat(waiting["resumes_at"]).timestamp()
    assert resumes > time.time() + 30
    assert "maintenance" in waiting["result"] and waiting["resumes_at"] in waiting["result"]
    shown = stage.flower.task(job_id)
    assert "maintenance" in shown["result"] and waiting["resumes_at"] in shown["result"]
    assert stage.events.task_state(job_id) == "WAITING"
    result = AsyncResult(job_id, app=app)
    assert result.state == "WAITING"
    assert result.info["waiting_for"] == "maintenance"
    assert result.info["resumes_at"] == waiting["resumes_at"]
    assert get_cover(job_id)["waiting_for"] == "maintenance"
    # The worker's run for the step ended; Celery reported no success for it.
    assert not {"task-succeeded", "task-failed", "task-retried"} & set(
        stage.events.types(job_id))


def test_a_wait_is_shown_only_while_its_job_has_not_ended(redis_server: RedisServer) -> None:
    with empty_db(redis_server, STORE_DB) as client:
        shown = ShownState(client)
        job_key, result_key = keys.job("j1"), "celery-task-meta-j1"
        assert not shown.show_wait("j1", result_key, "waiting", 60)  # no record at all
        client.hset(job_key, "state", "submitted")
        assert shown.show_wait("j1", result_key, "waiting", 60)
        assert client.get(result_key) == "waiting" and 0 < client.ttl(result_key) <= 60
        for final in ("succeeded", "failed"):
            # The ending's outcome is written after the record turned final: a slower
            # run's wait must never cover it.
            client.set(result_key, "the outcome")
            client.hset(job_key, "state", final)
            assert not shown.show_wait("j1", result_key, "waiting", 60)
            assert client.get(result_key) == "the outcome" and shown.has_ended("j1")


def test_a_wait_crosses_the_pool_pipe_whole_and_says_why_and_until_when() -> None:
    waits = JobWaits("task-waiting", "WAITING: waits for maintenance until T", "maintenance",
                     iso(1_800_000_000.0))
    back = pickle.loads(pickle.dumps(waits))
    assert isinstance(back, Retry) and str(back) == "WAITING: waits for maintenance until T"
    assert back.event_fields() == {"result": "WAITING: waits for maintenance until T",
                                   "reason": "maintenance",
                                   "resumes_at": "2027-01-15T08:00:00.000Z"}


def test_a_typed_error_shows_its_kind_code_message_and_retryable_in_its_repr() -> None:
    assert repr(NotFound("music task not found", 404)) == (
        "NotFound(kind='not_found', code=404, message='music task not found', "
        "retryable=False)")
    assert "retryable=True" in repr(GenerationFailed("cover generation failed", 501))
