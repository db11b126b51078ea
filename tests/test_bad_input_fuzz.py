"""Bad input everywhere, generated with hypothesis: refused with a clear error or
handled; no crash, no API call for invalid input, no worker left stuck."""

from __future__ import annotations

import concurrent.futures
import io
import json
import time
import uuid

import pytest
import redis
import requests
from celery.result import AsyncResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer

from kie_covers import enqueue_cover, wait_for_cover
from kie_covers.core.answers import interpret, interpret_callback
from kie_covers.core.batch import BatchTooLarge, read_batch
from kie_covers.core.errors import CoverError, InvalidPayload
from kie_covers.core.schemas import MAX_JOB_ID_CHARS, job_id_problem, validate_cover_request
from kie_covers.runtime.app import app
from kie_covers.runtime.messages import COVER_TASK as TASK_NAME
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.standin import KieStandin
from tests.conftest import QUEUE
from tests.services import WebProcess, WorkerProcess, wait_until

# 3,000 to 5,000 characters: a short random text repeated to a random length. The
# length is what such a leaf is for; drawing thousands of characters one by one took
# most of the fast layer's time.
long_text = st.builds(lambda part, size: (part * (size // len(part) + 1))[:size],
                      st.text(alphabet=st.characters(codec="utf-8"), min_size=1,
                              max_size=50),
                      st.integers(min_value=3000, max_value=5000))
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=50), long_text,
    st.just("http://127.0.0.1:9/cb"), st.just("73d6128b3523a0079df10da9471017c8"),
)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
fuzz = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


#: Jobs the producer test accepts go here, where no worker takes them.
UNCONSUMED = "covers-fuzz-unconsumed"


@fuzz
@given(task_id=json_value, url=json_value)
def test_the_producer_api_refuses_or_accepts_exactly_what_validation_says(
    redis_server: RedisServer, task_id: object, url: object
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    # A queue no worker takes: accepted jobs must not run on after this test and write
    # records into the next test's freshly emptied Redis.
    before = client.llen(UNCONSUMED)
    try:
        validate_cover_request({"taskId": task_id, "callBackUrl": url})
        valid = True
    except InvalidPayload:
        valid = False
    # Any JSON value goes in, str or not: the API must check at run time what the
    # annotations only promise.
    if valid:
        assert enqueue_cover(task_id, url, queue=UNCONSUMED)  # type: ignore[arg-type]
        return
    with pytest.raises(InvalidPayload) as caught:
        enqueue_cover(task_id, url, queue=UNCONSUMED)  # type: ignore[arg-type]
    assert caught.value.fields  # names at least one field
    assert client.llen(UNCONSUMED) == before


@pytest.mark.e2e
@fuzz
@given(kwargs=st.dictionaries(
    st.sampled_from(["taskId", "callBackUrl", "extra", "task_id", ""]), json_value,
    max_size=3))
def test_raw_messages_with_junk_are_refused_without_calling_kie(
    standin_server: KieStandin, worker: WorkerProcess, kwargs: dict[str, object]
) -> None:
    try:
        validate_cover_request(kwargs)
        return  # valid ones are the pipeline tests' business
    except InvalidPayload:
        pass
    generates = standin_server.counts()["generate"]
    job_id = str(uuid.uuid4())
    app.send_task(TASK_NAME, kwargs=kwargs, task_id=job_id, queue=QUEUE)
    with pytest.raises(InvalidPayload):
        AsyncResult(job_id, app=app).get(timeout=20)
    assert standin_server.counts()["generate"] == generates
    assert worker.process is not None and worker.process.poll() is None


@pytest.mark.e2e
def test_an_undecodable_message_does_not_stick_the_worker(
    standin: KieStandin, worker: WorkerProcess, redis_server: RedisServer
) -> None:
    # Given raw bytes that are neither UTF-8 nor JSON, published as a cover task
    # (kombu's Connection, Producer and Exchange are unannotated: hence the ignores)
    with Connection(redis_server.url) as conn:  # type: ignore[no-untyped-call]
        producer = Producer(  # type: ignore[no-untyped-call]
            conn, exchange=Exchange(QUEUE, type="direct"),  # type: ignore[no-untyped-call]
            routing_key=QUEUE)
        for body in (b"\xff\xfe\x00junk", b"{not json", b"[1, 2, 3]"):
            producer.publish(  # type: ignore[no-untyped-call]
                body, content_type="application/json", content_encoding="binary",
                headers={"task": TASK_NAME, "id": str(uuid.uuid4()), "lang": "py"})
    # Then a good job queued after them still completes
    record = wait_for_cover(enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/cb"),
                            timeout_s=30)
    assert record["state"] == "succeeded"
    assert worker.process is not None and worker.process.poll() is None


# Printable ASCII without spaces: requests itself refuses header values with
# leading or trailing whitespace before anything is sent.
header_value = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                       max_size=60)


@pytest.mark.e2e
@fuzz
@given(body=json_value, stamp=header_value, signature=header_value,
       raw=st.one_of(st.none(), st.binary(max_size=300)))
def test_junk_callbacks_are_refused_with_a_4xx_and_never_a_crash(
    web: WebProcess, body: object, stamp: str, signature: str, raw: bytes | None
) -> None:
    data = raw if raw is not None else json.dumps(body).encode()
    answer = requests.post(web.url, data=data, timeout=10, headers={
        "X-Webhook-Timestamp": stamp, "X-Webhook-Signature": signature,
        "Content-Type": "application/json"})
    assert answer.status_code in (400, 401, 413), answer.text
    assert "error" in answer.json()


@settings(max_examples=400, deadline=None)
@given(status=st.integers(min_value=100, max_value=599),
       headers=st.dictionaries(st.sampled_from(["Retry-After", "Content-Type", "X"]),
                               header_value, max_size=2),
       body=st.one_of(st.binary(max_size=200), json_value.map(
           lambda v: json.dumps(v).encode()),
           st.builds(lambda c, m, d: json.dumps({"code": c, "msg": m, "data": d}).encode(),
                     st.one_of(st.integers(), st.text(max_size=5), st.none()),
                     json_value, json_value)))
def test_any_api_answer_becomes_data_or_a_typed_error(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    try:
        interpret(status, headers, body)
    except CoverError as error:
        assert error.kind and isinstance(error.message, str)


@settings(max_examples=300, deadline=None)
@given(body=json_value)
def test_any_callback_body_is_read_or_refused_as_invalid(body: object) -> None:
    try:
        outcome = interpret_callback(body)
    except InvalidPayload as bad:
        assert bad.fields
    else:
        assert outcome.cover_task_id


@pytest.mark.e2e
def test_a_flood_of_bad_callbacks_leaves_the_endpoint_answering_and_jobs_correct(
    standin: KieStandin, worker: WorkerProcess, web: WebProcess
) -> None:
    junk: list[tuple[bytes, dict[str, str]]] = [
        (b'{"code": 200, "data": {"taskId": "x", "images": []}}', {}),  # unsigned
        (b'{"code": 200, "data": {"taskId": "x"}}',
         {"X-Webhook-Timestamp": str(int(time.time())), "X-Webhook-Signature": "AAAA"}),
        (b'{"code": 200, "data": {"taskId": "x"}}',
         {"X-Webhook-Timestamp": "1", "X-Webhook-Signature": "AAAA"}),  # replayed
        (b"x" * 70_000, {}),  # oversized
        (b"\xff\xfe", {}),
    ]
    job_ids = [enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/cb") for _ in range(20)]

    def attack(i: int) -> int:
        body, headers = junk[i % len(junk)]
        return requests.post(web.url, data=body, headers=headers, timeout=10).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attack, range(1500)))
    assert set(codes) <= {400, 401, 413}
    assert requests.get(web.url.replace("/kie/callback", "/healthz"), timeout=5).ok
    records = [wait_for_cover(j, timeout_s=30) for j in job_ids]
    assert [r["state"] for r in records] == ["succeeded"] * 20
    assert sorted(standin.paid().values()) == [1] * 20


# --- edges: ids matched whole, URLs without control characters or non-ASCII ---------

task_ids = st.text(alphabet="abcXYZ019_.:-", min_size=1, max_size=100).filter(
    lambda t: t[0].isalnum())
url_paths = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                           exclude_characters="#?%\\^`{|}<>\"[]"),
                    max_size=40)


@settings(max_examples=200, deadline=None)
@given(task_id=task_ids, ending=st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\x00"]))
def test_a_valid_task_id_with_a_line_end_is_refused(task_id: str, ending: str) -> None:
    assert validate_cover_request({"taskId": task_id, "callBackUrl": "http://a.example/"})
    with pytest.raises(InvalidPayload) as caught:
        validate_cover_request({"taskId": task_id + ending, "callBackUrl": "http://a.example/"})
    assert list(caught.value.fields) == ["taskId"]


@settings(max_examples=200, deadline=None)
@given(path=url_paths, bad=st.one_of(
           st.characters(categories=["Cc"]),
           st.characters(min_codepoint=128, exclude_categories=["Cc"])),
       where=st.integers(min_value=0, max_value=60))
def test_a_control_or_non_ascii_character_anywhere_in_a_callback_url_is_refused(
    path: str, bad: str, where: int
) -> None:
    url = "http://a.example/" + path
    validate_cover_request({"taskId": "abc", "callBackUrl": url})
    index = min(where, len(url))
    spoiled = url[:index] + bad + url[index:]
    with pytest.raises(InvalidPayload) as caught:
        validate_cover_request({"taskId": "abc", "callBackUrl": spoiled})
    [message] = caught.value.fields["callBackUrl"]
    assert list(caught.value.fields) == ["callBackUrl"]
    assert ("control characters" in message or "must be ASCII" in message
            or "Not a valid URL" in message), message


@settings(max_examples=300, deadline=None)
@given(job_id=st.one_of(st.text(max_size=200), st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=120, max_size=140)))
def test_a_job_id_is_accepted_exactly_when_short_printable_ascii(job_id: str) -> None:
    problem = job_id_problem(job_id)
    fine = 1 <= len(job_id) <= MAX_JOB_ID_CHARS and all("!" <= c <= "~" for c in job_id)
    assert (problem is None) == fine
    if problem is not None:
        assert len(problem) < 150  # names the rule, never quotes the id


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=20_000), st.builds(
    lambda head, n, tail: head + b"a" * n + tail, st.binary(max_size=50),
    st.integers(min_value=8000, max_value=9000), st.binary(max_size=50))))
def test_any_batch_bytes_are_read_or_refused_as_too_large(data: bytes) -> None:
    try:
        plan = read_batch(io.BytesIO(data), default_callback_url="http://127.0.0.1:9/cb")
    except BatchTooLarge as too_large:
        assert too_large.fields
    else:
        assert all(bad.fields for bad in plan.bad)


bad_job_ids = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=129,
            max_size=5000),
    st.builds(lambda a, c, b: a + c + b, st.text(alphabet="abc123-", max_size=20),
              st.sampled_from([" ", "\n", "\t", "é", "\x7f"]),
              st.text(alphabet="abc123-", max_size=20)),
)


@pytest.mark.e2e
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(job_id=bad_job_ids)
def test_raw_messages_with_bad_job_ids_are_dropped_and_the_worker_lives(
    standin_server: KieStandin, worker: WorkerProcess, redis_server: RedisServer, job_id: str
) -> None:
    dropped = worker.log().count("message dropped: job id")
    generates = standin_server.counts()["generate"]
    app.send_task(TASK_NAME, kwargs={"taskId": "fuzzjobid", "callBackUrl": "http://127.0.0.1:9/cb"},
                  task_id=job_id, queue=QUEUE)
    wait_until(lambda: worker.log().count("message dropped: job id") > dropped, 30,
               message="the worker to drop the message")
    assert worker.process is not None and worker.process.poll() is None
    assert standin_server.counts()["generate"] == generates
    assert not redis.Redis.from_url(redis_server.url).exists(f"covers:job:{job_id}")
