"""The callback endpoint (`covers web`): signatures, replays, size caps, bad bodies.

Every callback we post carries the job id and token the worker would have put in the
callBackUrl (`job_url`); tests/test_callback_security.py covers callbacks without them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import pytest
import requests

from kie_covers import enqueue_cover, get_cover
from kie_covers.config import keys
from kie_covers.runtime.callback_secret import callback_secrets
from kie_covers.runtime.connections import get_store
from kie_covers.standin import KieStandin
from kie_covers.store.run import Run
from tests.conftest import HMAC_KEY
from tests.services import StartWorker, WebProcess, wait_until

pytestmark = pytest.mark.e2e


def sign(task_id: str, timestamp: int, key: str = HMAC_KEY) -> str:
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def job_url(web: WebProcess, job_id: str, token: str | None = None) -> str:
    """The callback URL a worker hands Kie for `job_id` (with its right token, unless
    `token` is given)."""
    if token is None:
        return callback_secrets().url(web.url, job_id)
    return f"{web.url}?job={job_id}&token={token}"


def post(web: WebProcess, body: object, task_id: str | None = None, *,
         timestamp: int | None = None, signature: str | None = None,
         raw: bytes | None = None, job: str | None = None,
         url: str | None = None) -> requests.Response:
    """POST a callback: signed for `task_id` (when given), to `job`'s callback URL (or
    `url`; with neither, to a URL with the token of a job that does not exist)."""
    headers = {"Content-Type": "application/json"}
    if task_id is not None:
        ts = int(time.time()) if timestamp is None else timestamp
        headers["X-Webhook-Timestamp"] = str(ts)
        headers["X-Webhook-Signature"] = signature or sign(task_id, ts)
    data = raw if raw is not None else json.dumps(body).encode()
    target = url or job_url(web, job or f"no-such-job-{uuid.uuid4()}")
    return requests.post(target, data=data, headers=headers, timeout=10)


def success_body(cover_id: str) -> dict[str, object]:
    return {"code": 200, "msg": "success",
            "data": {"taskId": cover_id, "images": ["http://127.0.0.1:9/a.png",
                                                    "http://127.0.0.1:9/b.png"]}}


def submitted_job(standin: KieStandin, start_worker: StartWorker) -> tuple[str, str]:
    """A job Kie has accepted, whose callback we hold back (and no poll comes soon)."""
    standin.set_callback_mode("drop")
    lazy = start_worker(KIE_POLL_INTERVAL="60")
    job_id = enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/cb", queue=lazy.queue)
    wait_until(lambda: get_cover(job_id)["state"] == "submitted", 15, message="submit")
    return job_id, str(get_cover(job_id)["cover_task_id"])


def test_a_signed_callback_completes_its_job_once(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    job_id, cover_id = submitted_job(standin, start_worker)
    first = post(web, success_body(cover_id), cover_id, job=job_id)
    assert first.status_code == 200 and first.json() == {"status": "completed"}
    record = get_cover(job_id)
    assert record["state"] == "succeeded"
    assert record["images"] == ["http://127.0.0.1:9/a.png", "http://127.0.0.1:9/b.png"]
    again = post(web, success_body(cover_id), cover_id, job=job_id)
    assert again.json() == {"status": "duplicate"}
    assert get_cover(job_id)["finished_at"] == record["finished_at"]


def test_a_failure_callback_fails_the_job(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    job_id, cover_id = submitted_job(standin, start_worker)
    body = {"code": 531, "msg": "generation failed, credits refunded",
            "data": {"taskId": cover_id}}
    assert post(web, body, cover_id, job=job_id).json() == {"status": "completed"}
    record = get_cover(job_id)
    assert record["state"] == "failed"
    assert record["error"]["code"] == 531
    assert record["error"]["retryable"] is True


@pytest.mark.parametrize(
    ("timestamp_shift", "signature", "expected"),
    [
        (0, "bm90IHRoZSByaWdodCBzaWduYXR1cmU=", 401),  # wrong signature
        (-3600, None, 401),  # replayed: an hour old
        (+3600, None, 401),  # from the future
    ],
)
def test_a_bad_or_stale_signature_is_refused_and_changes_nothing(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess,
    timestamp_shift: int, signature: str | None, expected: int,
) -> None:
    job_id, cover_id = submitted_job(standin, start_worker)
    answer = post(web, success_body(cover_id), cover_id, job=job_id,
                  timestamp=int(time.time()) + timestamp_shift, signature=signature)
    assert answer.status_code == expected
    assert get_cover(job_id)["state"] == "submitted"


def test_a_signature_made_with_another_key_is_refused(web: WebProcess, standin: KieStandin
                                                      ) -> None:
    ts = int(time.time())
    answer = post(web, success_body("abc"), "abc", timestamp=ts,
                  signature=sign("abc", ts, key="someone-else"))
    assert answer.status_code == 401


def test_an_unsigned_callback_is_refused(web: WebProcess, standin: KieStandin) -> None:
    answer = post(web, success_body("abc"))
    assert answer.status_code == 401
    assert "X-Webhook-Signature" in answer.json()["error"]


def test_an_oversized_body_is_refused(web: WebProcess, standin: KieStandin) -> None:
    answer = post(web, None, raw=b'{"x": "' + b"a" * 70_000 + b'"}')
    assert answer.status_code == 413


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", None),
        (b"\xff\xfe\x00", None),
        (b"[1, 2]", None),
        (json.dumps({"code": 200, "msg": "ok", "data": {"taskId": "abc"}}).encode(),
         "data.images"),
        (json.dumps({"code": "200", "data": {"taskId": "abc", "images": []}}).encode(), "code"),
        (json.dumps({"code": 200, "data": {"taskId": "abc",
                                          "images": ["javascript:alert(1)"]}}).encode(),
         "data.images.0"),
    ],
)
def test_a_malformed_body_is_refused_with_the_field(
    web: WebProcess, standin: KieStandin, raw: bytes, field: str | None
) -> None:
    try:
        task_id = json.loads(raw)["data"]["taskId"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        task_id = "abc"
    answer = post(web, None, task_id, raw=raw)
    assert answer.status_code == 400
    if field is not None:
        assert field in answer.json()["fields"]


def test_a_callback_naming_no_known_job_is_refused_and_not_kept(
    web: WebProcess, standin: KieStandin
) -> None:
    # A right token for a job id that no job has (say, long expired): nothing to end,
    # and nothing is kept for a submit that will never come.
    answer = post(web, success_body("never-heard-of-it"), "never-heard-of-it")
    assert answer.status_code == 409
    assert "error" in answer.json()
    assert not get_store().redis.exists(keys.early_callback("never-heard-of-it"))


def test_only_post_is_allowed(web: WebProcess) -> None:
    assert requests.get(web.url, timeout=5).status_code == 405
    assert requests.get(web.url.replace("/kie/callback", "/nope"), timeout=5).status_code == 404


def test_a_callback_that_comes_before_the_submit_is_recorded_is_kept_for_it(
    web: WebProcess, standin: KieStandin
) -> None:
    # Given a callback for a cover id that no job owns yet
    store = get_store()
    job_id, _ = store.enqueue(str(uuid.uuid4()), uuid.uuid4().hex, "http://127.0.0.1:9/cb",
                              60, "covers-unused")
    cover_id = "early" + uuid.uuid4().hex
    assert post(web, success_body(cover_id), cover_id, job=job_id).json() == {
        "status": "unknown"}
    # When a run records the submit's answer afterwards
    record = store.get(job_id)
    assert record is not None
    run = store.begin(job_id, record.music_task_id, record.callback_url, 60, "covers-unused")
    assert isinstance(run, Run)
    with run:
        marked = run.submitted(cover_id, 60)
        # Then the held callback is handed to the run, which still holds the job
        assert run.open
    recorded = store.get(job_id)
    assert marked.changed and recorded is not None
    assert recorded.state.value == "submitted" and recorded.cover_task_id == cover_id
    assert marked.early_callback is not None
    assert json.loads(marked.early_callback) == success_body(cover_id)
    # And a second record of it changes nothing (the job is no longer queued)
    again = store.begin(job_id, record.music_task_id, record.callback_url, 60, "covers-unused")
    assert isinstance(again, Run)
    with again:
        assert again.submitted(cover_id, 60) == (False, None)
