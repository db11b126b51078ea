"""Bad input on every way in gets a clear, per-field error and never reaches Kie."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis
from celery.result import AsyncResult

from kie_covers import enqueue_cover, get_cover
from kie_covers.core.errors import InvalidPayload
from kie_covers.runtime.app import app
from kie_covers.runtime.messages import COVER_TASK as TASK_NAME
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.standin import KieStandin
from tests.conftest import QUEUE, process_env
from tests.services import ROOT, WorkerProcess

GOOD_URL = "http://127.0.0.1:9/cb"


@pytest.mark.parametrize(
    ("task_id", "url", "bad_field", "rule"),
    [
        ("", GOOD_URL, "taskId", "Length"),
        ("a" * 129, GOOD_URL, "taskId", "Length"),
        ("has space", GOOD_URL, "taskId", "letters, digits"),
        ("../etc/passwd", GOOD_URL, "taskId", "letters, digits"),
        (None, GOOD_URL, "taskId", "Field may not be null"),
        (123, GOOD_URL, "taskId", "Not a valid string"),
        ("abc", "ftp://example.com/x", "callBackUrl", "Not a valid URL"),
        ("abc", "/relative/path", "callBackUrl", "Not a valid URL"),
        ("abc", "http://" + "a" * 2100 + ".com/", "callBackUrl", "Longer than maximum"),
        ("abc", "", "callBackUrl", ""),
        ("abc", ["http://x.com"], "callBackUrl", "Not a valid"),
        ("x\n", GOOD_URL, "taskId", "letters, digits"),
        ("abc", "http://x.com/cb\x00", "callBackUrl", "control characters"),
        ("abc", "http://x.com/cb\r\nX-Evil: 1", "callBackUrl", "U+000D"),
        ("abc", "http://x.com/c\tb", "callBackUrl", "control characters"),
        ("abc", "http://x.com/lieder/ü", "callBackUrl", "must be ASCII"),
        ("abc", "http://bücher.example/cb", "callBackUrl", "xn--bcher-kva.example"),
    ],
)
def test_the_producer_api_refuses_bad_input_and_queues_nothing(
    standin: KieStandin, redis_server: RedisServer, task_id: object, url: object,
    bad_field: str, rule: str,
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        enqueue_cover(task_id, url)  # type: ignore[arg-type]  # wrong types on purpose
    assert bad_field in caught.value.fields
    assert rule in " ".join(caught.value.fields[bad_field])
    assert bad_field in str(caught.value)
    client = redis.Redis.from_url(redis_server.url)
    assert client.llen(QUEUE) == 0
    # No job was recorded (a live worker's heartbeat and gauges may exist)
    for pattern in ("covers:job:*", "covers:music:*", "covers:state:*", "covers:due*"):
        assert not list(client.scan_iter(pattern)), pattern


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("kwargs", "args", "bad_field"),
    [
        ({"taskId": "abc"}, [], "callBackUrl"),
        ({"callBackUrl": GOOD_URL}, [], "taskId"),
        ({"taskId": 5, "callBackUrl": GOOD_URL}, [], "taskId"),
        ({"taskId": "x" * 100_000, "callBackUrl": GOOD_URL}, [], "taskId"),
        ({"taskId": "abc", "callBackUrl": {"nested": ["junk"]}}, [], "callBackUrl"),
        ({"taskId": "abc", "callBackUrl": GOOD_URL, "extra": 1}, [], "extra"),
        ({"task_id": "abc", "callback_url": GOOD_URL}, [], "taskId"),
        ({}, ["abc", GOOD_URL], "_positional"),
        ({"taskId": "\udcff\udcfe", "callBackUrl": GOOD_URL}, [], "taskId"),
        ({"taskId": "abc\n", "callBackUrl": GOOD_URL}, [], "taskId"),
        ({"taskId": "abc", "callBackUrl": GOOD_URL + "\n"}, [], "callBackUrl"),
        ({"taskId": "abc", "callBackUrl": "http://bücher.example/cb"}, [], "callBackUrl"),
    ],
)
def test_a_raw_celery_message_with_a_bad_payload_fails_without_calling_kie(
    standin: KieStandin, worker: WorkerProcess, kwargs: dict[str, object],
    args: list[object], bad_field: str,
) -> None:
    job_id = str(uuid.uuid4())
    app.send_task(TASK_NAME, args=args, kwargs=kwargs, task_id=job_id, queue=QUEUE)
    with pytest.raises(InvalidPayload) as caught:
        AsyncResult(job_id, app=app).get(timeout=20)
    assert bad_field in caught.value.fields
    record = get_cover(job_id)
    assert record["state"] == "failed"
    assert record["error"]["kind"] == "invalid_payload"
    assert record["error"]["retryable"] is False
    assert standin.counts()["generate"] == 0


@pytest.mark.e2e
def test_a_valid_raw_celery_message_by_name_is_a_job(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    # A producer in another language sends the task by name, with its own id.
    job_id = str(uuid.uuid4())
    app.send_task(TASK_NAME, kwargs={"taskId": "rawmusic1", "callBackUrl": GOOD_URL},
                  task_id=job_id, queue=QUEUE)
    outcome = AsyncResult(job_id, app=app).get(timeout=20)
    assert outcome["state"] == "succeeded"
    assert outcome["music_task_id"] == "rawmusic1"
    assert standin.paid() == {"rawmusic1": 1}
    # and the producer API knows it as the job for that music task
    assert enqueue_cover("rawmusic1", GOOD_URL) == job_id


@pytest.mark.e2e
def test_the_cli_refuses_bad_input_with_the_field_and_exit_code_2(standin: KieStandin) -> None:
    done = subprocess.run(  # check=False: the exit code is the point
        [sys.executable, "-m", "kie_covers.worker.cli", "enqueue", "bad id!", "ftp://x"],
        check=False, cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "taskId" in done.stderr and "callBackUrl" in done.stderr
    assert standin.counts()["generate"] == 0
