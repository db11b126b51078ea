"""Every answer code in kie-api.md leads to its documented outcome (real worker, stand-in)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import pytest
import requests

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.services.overview import cluster_overview
from kie_covers.standin import KieStandin
from tests.conftest import API_KEY
from tests.services import StartWorker, WebProcess, WorkerProcess, wait_until

pytestmark = pytest.mark.e2e

APP_CALLBACK = "http://127.0.0.1:9/app-callback"


def music_id() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        ("401", "unauthorized", 401),
        ("404", "not_found", 404),
        ("422", "rejected", 422),
        ("409", "already_generated", 409),
        ("400", "already_generated", 400),
        ("451", "unknown_answer", 451),
        # The same codes with HTTP 200 and the code only in the body
        ("body-401", "unauthorized", 401),
        ("body-404", "not_found", 404),
        ("body-422", "rejected", 422),
        ("body-409", "already_generated", 409),
    ],
)
def test_a_never_retry_answer_fails_after_exactly_one_call(
    standin: KieStandin, worker: WorkerProcess, fault: str, kind: str, code: int
) -> None:
    # Given Kie answers a code that retrying cannot fix
    standin.inject("generate", fault, times=None)
    task_id = music_id()
    record = wait_for_cover(enqueue_cover(task_id, APP_CALLBACK), timeout_s=20)
    # Then the job fails at once with the API's message, tried exactly once
    assert record["state"] == "failed"
    assert record["error"]["kind"] == kind
    assert record["error"]["code"] == code
    assert record["error"]["retryable"] is False
    assert record["error"]["message"]
    assert record["attempts"] == 1
    assert standin.counts()["generate"] == 1
    assert standin.paid() == {}


@pytest.mark.parametrize(
    "fault",
    ["429", "body-429", "455", "body-455", "500", "body-500", "malformed", "html", "empty",
     "reset", "no-data"],
)
def test_a_passing_fault_is_retried_until_the_cover_is_made(
    standin: KieStandin, worker: WorkerProcess, fault: str
) -> None:
    # Given Kie misbehaves twice on generate
    standin.inject("generate", fault, times=2)
    task_id = music_id()
    record = wait_for_cover(enqueue_cover(task_id, APP_CALLBACK), timeout_s=30)
    # Then the job retries and succeeds, paid once
    assert record["state"] == "succeeded", record
    assert standin.counts()["generate"] == 3
    assert standin.paid() == {task_id: 1}


def test_a_fault_while_polling_is_retried(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    standin.set_callback_mode("drop")
    standin.inject("record-info", "500", times=2)
    record = wait_for_cover(enqueue_cover(music_id(), APP_CALLBACK), timeout_s=30)
    assert record["state"] == "succeeded"
    assert record["polls"] >= 3


def test_retry_after_is_honoured(standin: KieStandin, worker: WorkerProcess) -> None:
    # Given a 429 that asks for 2 seconds (our own backoff would wait < 0.5 s)
    standin.inject("generate", "429", times=1, retry_after="2")
    job_id = enqueue_cover(music_id(), APP_CALLBACK)
    record = wait_for_cover(job_id, timeout_s=30)
    assert record["state"] == "succeeded"
    assert float(_seconds(record["submitted_at"], record["created_at"])) >= 1.9


def _seconds(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def test_an_upstream_fault_that_persists_fails_as_retryable_after_max_attempts(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    standin.inject("generate", "500", times=None)
    record = wait_for_cover(enqueue_cover(music_id(), APP_CALLBACK), timeout_s=30)
    assert record["state"] == "failed"
    assert record["error"]["kind"] == "upstream"
    assert record["error"]["retryable"] is True
    # COVERS_MAX_ATTEMPTS=4 in the test settings
    assert standin.counts()["generate"] == 4
    assert standin.paid() == {}


def test_out_of_credits_holds_the_job_until_credits_return(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    # Given an account with no credits
    standin.set_credits(0)
    started = time.time()
    task_id = music_id()
    job_id = enqueue_cover(task_id, APP_CALLBACK)
    wait_until(lambda: get_cover(job_id)["waiting_for"] == "out_of_credits", 15,
               message="the job to wait for credits")
    assert get_cover(job_id)["state"] == "queued"
    # When credits are topped up
    standin.set_credits(100)
    # Then the job completes, and no generate was sent while the credit check said 0
    record = wait_for_cover(job_id, timeout_s=30)
    assert record["state"] == "succeeded"
    assert standin.paid() == {task_id: 1}
    assert standin.counts()["credit"] >= 1
    assert standin.counts()["generate"] == 2  # the refused one, and the paid one
    # The overview keeps the newest credit check: the one that found the credits back
    credits = cluster_overview().credits
    assert credits.held is None and credits.last_check is not None
    assert credits.last_check.left == 100
    assert started - 1 <= credits.last_check.at <= time.time()


@pytest.mark.parametrize(
    ("code", "form"), [(400, "status"), (409, "status"), (409, "body")]
)
def test_an_existing_cover_is_tracked_not_paid_again(
    standin: KieStandin, worker: WorkerProcess, code: int, form: str
) -> None:
    # Kie's docs answer a duplicate with 400; 409 ("cover record already exists")
    # with data.taskId is the same news, in the HTTP status or only in the body
    standin.set_style(duplicate_code=code, code_form=form)
    # Given a music task whose cover was already generated outside this job
    task_id = music_id()
    answer = requests.post(
        f"{standin.base_url}/api/v1/suno/cover/generate",
        json={"taskId": task_id, "callBackUrl": APP_CALLBACK},
        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5,
    ).json()
    existing = answer["data"]["taskId"]
    # When a job is enqueued for it, Kie answers 400 (or 409) naming the existing cover
    record = wait_for_cover(enqueue_cover(task_id, APP_CALLBACK), timeout_s=30)
    # Then the job tracks that cover and succeeds, still paid once
    assert record["state"] == "succeeded"
    assert record["cover_task_id"] == existing
    assert standin.paid() == {task_id: 1}
    assert standin.answers()[f"generate:{code}"] == 1


def test_every_failure_callback_code_fails_the_job_with_that_code(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    # Given a worker that would poll only after a minute, so callbacks end its jobs
    worker = start_worker(KIE_POLL_INTERVAL="60")
    # When covers fail with each code of Kie's callback page
    kinds = {400: "rejected", 408: "generation_failed", 500: "generation_failed",
             501: "generation_failed", 531: "generation_failed"}
    jobs = {code: enqueue_cover(f"genfail{code}-{music_id()}", APP_CALLBACK,
                                queue=worker.queue) for code in kinds}
    # Then each job fails with the callback's code and message
    for code, job_id in jobs.items():
        record = wait_for_cover(job_id, timeout_s=30)
        assert record["state"] == "failed", record
        assert record["error"]["code"] == code
        assert record["error"]["kind"] == kinds[code]
        assert record["error"]["message"]
        assert record["polls"] == 0  # ended by the callback
    assert standin.callbacks_sent() == len(kinds)
