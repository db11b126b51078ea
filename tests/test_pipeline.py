"""End to end: producer API → real worker processes → stand-in over loopback → results."""

from __future__ import annotations

import time
import uuid

import pytest
from celery.result import AsyncResult

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.core import errors
from kie_covers.runtime.app import app
from kie_covers.standin import KieStandin
from tests.services import StartWorker, WebProcess, WorkerProcess, wait_until

APP_CALLBACK = "http://127.0.0.1:9/app-callback"


def music_id() -> str:
    return uuid.uuid4().hex


@pytest.mark.e2e
def test_a_batch_succeeds_with_two_images_each_and_one_paid_call(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    # Given a batch of music tasks
    task_ids = [music_id() for _ in range(12)]
    # When each is enqueued
    job_ids = [enqueue_cover(t, APP_CALLBACK) for t in task_ids]
    # Then every job ends succeeded with two distinct images
    records = [wait_for_cover(j, timeout_s=30) for j in job_ids]
    assert [r["state"] for r in records] == ["succeeded"] * len(job_ids)
    for record, task_id in zip(records, task_ids, strict=True):
        assert record["music_task_id"] == task_id
        assert len(record["images"]) == 2 and len(set(record["images"])) == 2
        assert record["cover_task_id"] and record["error"] is None
        assert record["attempts"] == 1
        assert record["finished_at"] >= record["submitted_at"] >= record["created_at"]
    # And Kie was paid exactly once per music task
    assert standin.paid() == {t: 1 for t in task_ids}
    # And Celery users read the same outcome through AsyncResult
    outcome = AsyncResult(job_ids[0], app=app).get(timeout=10)
    assert outcome["state"] == "succeeded"
    assert outcome["images"] == records[0]["images"]


@pytest.mark.e2e
def test_a_second_enqueue_for_the_same_music_task_returns_the_same_job(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    task_id = music_id()
    first = enqueue_cover(task_id, APP_CALLBACK)
    assert enqueue_cover(task_id, APP_CALLBACK) == first
    wait_for_cover(first, timeout_s=20)
    assert enqueue_cover(task_id, "http://127.0.0.1:9/other") == first
    assert standin.paid() == {task_id: 1}


@pytest.mark.e2e
def test_a_new_enqueue_after_a_failure_makes_a_new_job(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    task_id = "notfound" + music_id()
    first = enqueue_cover(task_id, APP_CALLBACK)
    assert wait_for_cover(first, timeout_s=20)["state"] == "failed"
    assert enqueue_cover(task_id, APP_CALLBACK) != first


@pytest.mark.e2e
def test_a_callback_completes_the_job_before_any_poll(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    # Given a worker that would poll only after a minute
    lazy = start_worker(KIE_POLL_INTERVAL="60")
    job_id = enqueue_cover(music_id(), APP_CALLBACK, queue=lazy.queue)
    # Then the signed callback ends the job, with no poll made
    record = wait_for_cover(job_id, timeout_s=15)
    assert record["state"] == "succeeded"
    assert record["polls"] == 0
    assert standin.counts()["record-info"] == 0
    assert AsyncResult(job_id, app=app).get(timeout=10)["images"] == record["images"]


@pytest.mark.e2e
def test_polling_completes_a_job_whose_callback_never_comes(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    standin.set_callback_mode("drop")
    job_id = enqueue_cover(music_id(), APP_CALLBACK)
    record = wait_for_cover(job_id, timeout_s=20)
    assert record["state"] == "succeeded"
    assert record["polls"] >= 1
    assert standin.callbacks_sent() == 0


@pytest.mark.e2e
def test_a_duplicated_callback_ends_the_job_once(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    standin.set_callback_mode("duplicate")
    job_id = enqueue_cover(music_id(), APP_CALLBACK)
    record = wait_for_cover(job_id, timeout_s=20)
    assert record["state"] == "succeeded"
    wait_until(lambda: standin.callbacks_sent() == 2, 10, message="both callbacks")
    assert get_cover(job_id)["finished_at"] == record["finished_at"]


@pytest.mark.e2e
def test_a_failure_raises_the_typed_error_through_async_result(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    job_id = enqueue_cover("notfound" + music_id(), APP_CALLBACK)
    with pytest.raises(errors.NotFound) as caught:
        AsyncResult(job_id, app=app).get(timeout=20)
    assert caught.value.code == 404
    record = get_cover(job_id)
    assert record["error"]["kind"] == "not_found"
    assert record["error"]["retryable"] is False


@pytest.mark.e2e
def test_a_failed_generation_fails_the_job_as_retryable(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    job_id = enqueue_cover("genfail" + music_id(), APP_CALLBACK)
    record = wait_for_cover(job_id, timeout_s=20)
    assert record["state"] == "failed"
    assert record["error"]["kind"] == "generation_failed"
    assert record["error"]["retryable"] is True


def test_an_unknown_job_id_is_a_clear_error() -> None:
    with pytest.raises(errors.UnknownJob, match="no cover job"):
        get_cover(str(uuid.uuid4()))


@pytest.mark.e2e
def test_a_worker_killed_mid_job_loses_nothing_and_pays_once(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    # Given a worker inside a slow generate call (Kie accepts after 2.5 s)
    standin.inject("generate", "slow", times=1, delay_s=2.5)
    first = start_worker()
    task_id = music_id()
    job_id = enqueue_cover(task_id, APP_CALLBACK, queue=first.queue)
    wait_until(lambda: standin.counts()["generate"] == 1, 10, message="generate call")
    time.sleep(0.5)
    # When the worker is killed with SIGKILL mid-call, and a new one starts
    first.kill()
    start_worker(queue=first.queue)
    # Then the job still ends succeeded, and Kie was paid once for the music task
    record = wait_for_cover(job_id, timeout_s=40)
    assert record["state"] == "succeeded", record
    wait_until(lambda: standin.paid().get(task_id) == 1, 5, message="ledger")
    assert standin.paid() == {task_id: 1}
