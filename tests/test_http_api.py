"""The HTTP producer API (`kie_covers.worker.http_api`, mounted in `covers web`).

Fast tests check the pure parts in process: the client-address rule (on the function
itself: nothing is ever sent to an address off 127.x), batch checking, the problem
documents' rules and the OpenAPI document. End-to-end tests run real ``covers web``
processes on 127.0.0.1 (one with COVERS_API_TOKEN, one without) against the suite's
Redis; no worker takes their jobs (their queue is their own), which the API's
answers do not need. Schemathesis then fuzzes the live API from the document.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from kie_covers import enqueue_cover, get_cover
from kie_covers.config import keys, load_settings
from kie_covers.core.addresses import is_loopback
from kie_covers.core.cover_items import check_batch
from kie_covers.core.errors import NotFound, UpstreamError
from kie_covers.core.problems import rule_of
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.kie_client import settings_masker
from kie_covers.runtime.logs import secret_filter
from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.standin import KieStandin
from kie_covers.worker.http_api import ROUTES, ProducerApi, local_client, openapi_document
from tests.conftest import process_env
from tests.services import ROOT, StartWorker, WebProcess, wait_until

#: The document as kept in the repository.
OPENAPI_FILE = ROOT / "worker" / "openapi" / "covers-api.json"
TOKEN = "api-" + secrets.token_hex(16)
APP_CALLBACK = "http://127.0.0.1:9/app-callback"
#: Small caps for the API processes, so the tests can pass them cheaply.
MAX_API_BYTES, MAX_BATCH = 8192, 5
PROBLEM = "application/problem+json"


# --- fast: pure parts ----------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.200.3.4", "::1", "::ffff:127.0.0.1"])
def test_loopback_addresses_are_loopback(address: str) -> None:
    assert is_loopback(address)
    assert local_client({"REMOTE_ADDR": address})


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.2", "172.16.0.9", "203.0.113.7",
                                     "2001:db8::1", "::ffff:10.1.2.3", "0.0.0.0", "::",
                                     "localhost", "", "not an address"])
def test_other_addresses_are_not_loopback(address: str) -> None:
    assert not is_loopback(address)
    assert not local_client({"REMOTE_ADDR": address})


@pytest.mark.parametrize("header", ["HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP"])
def test_a_forwarded_request_is_not_local_even_from_loopback(header: str) -> None:
    assert not local_client({"REMOTE_ADDR": "127.0.0.1", header: "203.0.113.7"})


def call_app(app: ProducerApi, environ: dict[str, Any]) -> tuple[str, dict[str, str], Any]:
    """Call the WSGI app in process (no socket): (status line, headers, JSON body)."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.update(status=status, headers=dict(headers))

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], json.loads(body)


def test_without_a_token_a_client_off_this_host_gets_403_before_anything_is_read() -> None:
    app = ProducerApi(load_settings({}))
    # A WSGI environ as waitress would build it for a client at 203.0.113.7; the body
    # stream would raise if read, and no Redis is reached before the refusal.
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/covers",
               "REQUEST_URI": "/v1/covers", "REMOTE_ADDR": "203.0.113.7",
               "CONTENT_LENGTH": "10", "wsgi.input": None}
    status, headers, body = call_app(app, environ)
    assert status.startswith("403")
    assert headers["Content-Type"] == PROBLEM
    assert body["type"] == "urn:kie-covers:problem:forbidden" and body["status"] == 403
    # The same client with the token set gets past the address rule to the token's.
    with_token = ProducerApi(load_settings({"COVERS_API_TOKEN": TOKEN}))
    status, _, body = call_app(with_token, {**environ, "HTTP_AUTHORIZATION": "Bearer nope"})
    assert status.startswith("401") and "nope" not in json.dumps(body)


def test_the_api_token_is_masked_in_log_lines_and_stored_texts() -> None:
    settings = load_settings({"COVERS_API_TOKEN": TOKEN})
    record = logging.LogRecord("covers.api", logging.INFO, __file__, 1,
                               "header was Bearer %s", (TOKEN,), None)
    assert secret_filter(settings).filter(record)
    assert TOKEN not in record.getMessage() and "***" in record.getMessage()
    assert TOKEN not in settings_masker(settings)(f"echoed {TOKEN} back")


def test_batch_checking_names_each_item_field_and_rule() -> None:
    good = {"taskId": "a1", "callBackUrl": APP_CALLBACK}
    checked = check_batch({"items": [good, {"callBackUrl": APP_CALLBACK},
                                     {**good, "priority": "urgent"}, dict(good), "a1",
                                     {"taskId": "b2", "callBackUrl": "ftp://x/"}]},
                          max_items=10)
    assert [(i, r["taskId"], r["priority"]) for i, r in checked.rows] == [(0, "a1", "bulk")]
    found = sorted((e.index, e.field, e.rule) for e in checked.errors)
    assert found == [(1, "taskId", "required"), (2, "priority", "one_of"),
                     (3, "taskId", "duplicate"), (4, "", "type"), (5, "callBackUrl", "url")]
    assert checked.refused_whole and not checked.skip_bad


def test_batch_defaults_skip_bad_and_caps() -> None:
    items = [{"taskId": "a1", "callBackUrl": APP_CALLBACK},
             {"taskId": "b2", "callBackUrl": APP_CALLBACK, "priority": "interactive",
              "tenant": "own"}]
    checked = check_batch({"items": [*items, {}], "tenant": "acme", "skipBad": True}, 10)
    assert [(r["priority"], r["tenant"]) for _i, r in checked.rows] == [
        ("bulk", "acme"), ("interactive", "own")]
    assert not checked.refused_whole and {e.index for e in checked.errors} == {2}
    # A bad default, an unknown key or too many items refuse the whole batch
    for body, field, rule in [({"items": items, "priority": "now"}, "priority", "one_of"),
                              ({"items": items, "skipbad": True}, "skipbad", "unknown_field"),
                              ({"items": items, "skipBad": "yes"}, "skipBad", "type"),
                              ({"items": items * 6}, "items", "max_items"),
                              ([items], "", "type"), ({}, "items", "required")]:
        refused = check_batch(body, 10)
        assert refused.refused_whole and not refused.rows
        assert [(e.index, e.field, e.rule) for e in refused.errors] == [(None, field, rule)]


def test_every_message_of_the_cover_schema_has_a_named_rule() -> None:
    cases = [
        ({"taskId": "", "callBackUrl": "http://x/"}, {"length", "pattern"}),
        ({"taskId": "a" * 200, "callBackUrl": "http://x/"}, {"length"}),
        ({"taskId": "a", "callBackUrl": "http://x/" + "a" * 3000}, {"max_length"}),
        ({"taskId": 5, "callBackUrl": "http://x/"}, {"type"}),
        ({"taskId": "a", "callBackUrl": "http://x/\n"}, {"no_control_characters"}),
        ({"taskId": "a", "callBackUrl": "http://bücher.example/"}, {"ascii"}),
        ({"taskId": "a", "callBackUrl": "gopher://x/"}, {"url"}),
        ({"taskId": "a", "callBackUrl": "http://x/", "tenant": None, "priority": None},
         {"not_null"}),
        ({"taskId": "a", "callBackUrl": "http://x/", "tenant": "-x"}, {"pattern"}),
    ]
    for body, rules in cases:
        checked = check_batch({"items": [body]}, 1)
        assert {e.rule for e in checked.errors} == rules, body
    assert rule_of("something nobody wrote") == "invalid"


def test_the_openapi_document_validates_and_names_every_route() -> None:
    document = json.loads(OPENAPI_FILE.read_text())
    validate(document)  # OpenAPI 3.1 rules, by openapi-spec-validator
    assert document["openapi"].startswith("3.1")
    assert openapi_document() == OPENAPI_FILE.read_bytes()  # the package data is the file
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    routed = {(method, "/" + "/".join(s if s is not None else "{jobId}" for s in route))
              for method, route, _handler in ROUTES}
    assert documented == routed


# --- end to end: real `covers web` processes ----------------------------------------


class Api:
    """A running ``covers web`` and how to call its API."""

    def __init__(self, web: WebProcess, token: str | None) -> None:
        self.web = web
        #: The Celery queue its jobs go to (no worker takes it unless a test starts one).
        self.queue = web.env["COVERS_QUEUE"]
        self.base = f"http://127.0.0.1:{web.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        if body is not None:
            kwargs["json"] = body
        return requests.post(self.base + path, headers=headers, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.get(self.base + path, headers=headers, timeout=10, **kwargs)


def start_api(run_dir: Path, token: str | None) -> WebProcess:
    env = process_env(COVERS_QUEUE=f"covers-api-{uuid.uuid4().hex[:8]}",
                      COVERS_MAX_API_BYTES=str(MAX_API_BYTES),
                      COVERS_API_MAX_BATCH=str(MAX_BATCH))
    env.pop("COVERS_API_TOKEN", None)
    if token:
        env["COVERS_API_TOKEN"] = token
    return WebProcess(free_port(), env, run_dir).start()


@pytest.fixture(scope="module")
def api(run_dir: Path, redis_server: RedisServer) -> Iterator[Api]:
    """``covers web`` with COVERS_API_TOKEN set."""
    web = start_api(run_dir, TOKEN)
    yield Api(web, TOKEN)
    web.stop()


@pytest.fixture(scope="module")
def open_api(run_dir: Path, redis_server: RedisServer) -> Iterator[Api]:
    """``covers web`` without COVERS_API_TOKEN (loopback clients only)."""
    web = start_api(run_dir, None)
    yield Api(web, None)
    web.stop()


def assert_problem(answer: requests.Response, status: int, kind: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == PROBLEM
    body: dict[str, Any] = answer.json()
    assert body["type"] == f"urn:kie-covers:problem:{kind}" and body["status"] == status
    assert body["title"] and body["detail"]
    return body


@pytest.mark.e2e
def test_enqueue_is_idempotent_per_music_task_and_reads_as_get_cover(
    standin: KieStandin, api: Api
) -> None:
    task = uuid.uuid4().hex
    first = api.post("/v1/covers", {"taskId": task, "callBackUrl": APP_CALLBACK,
                                    "tenant": "acme"})
    assert first.status_code == 202 and first.headers["Content-Type"] == "application/json"
    job_id = first.json()["jobId"]
    assert first.json() == {"jobId": job_id, "state": "queued"}
    # The same music task again, over HTTP or from Python: the same job, nothing new
    again = api.post("/v1/covers", {"taskId": task, "callBackUrl": APP_CALLBACK,
                                    "priority": "bulk"})
    assert again.status_code == 202 and again.json()["jobId"] == job_id
    assert enqueue_cover(task, APP_CALLBACK) == job_id
    # Location names where to read it; GET there answers get_cover's JSON, with the
    # lane and tenant of the first request
    assert first.headers["Location"] == again.headers["Location"] == f"/v1/covers/{job_id}"
    read = api.get(first.headers["Location"])
    assert read.status_code == 200 and read.json() == get_cover(job_id)
    assert (read.json()["priority"], read.json()["tenant"]) == ("interactive", "acme")
    # After a failure a new job is made, as enqueue_cover does
    assert get_store().finish(job_id, error=NotFound("no such music task", 404)) is not None
    assert api.post("/v1/covers", {"taskId": task, "callBackUrl": APP_CALLBACK}).json()[
        "jobId"] != job_id


@pytest.mark.e2e
def test_the_token_is_required_when_set_and_never_echoed_or_logged(api: Api) -> None:
    body = {"taskId": uuid.uuid4().hex, "callBackUrl": APP_CALLBACK}
    missing = api.post("/v1/covers", body, headers={"Authorization": ""})
    assert_problem(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong_token = "wrong-" + secrets.token_hex(8)
    wrong = api.post("/v1/covers", body, headers={"Authorization": f"Bearer {wrong_token}"})
    assert_problem(wrong, 401, "unauthorized")
    for answer in (missing, wrong):
        shown = answer.text + json.dumps(dict(answer.headers))
        assert wrong_token not in shown and TOKEN not in shown
    assert_problem(api.get("/v1/failures", headers={"Authorization": "Basic eDp5"}),
                   401, "unauthorized")
    # The right token passes; the document needs none
    assert api.post("/v1/covers", body).status_code == 202
    assert requests.get(api.base + "/v1/openapi.json", timeout=10).status_code == 200
    log = api.web.log_path.read_text(errors="replace")
    assert wrong_token not in log and TOKEN not in log


@pytest.mark.e2e
def test_without_a_token_only_direct_loopback_clients_are_answered(open_api: Api) -> None:
    body = {"taskId": uuid.uuid4().hex, "callBackUrl": APP_CALLBACK}
    assert open_api.post("/v1/covers", body).status_code == 202
    # Through a proxy on this host (which adds X-Forwarded-For), a client is not local
    proxied = open_api.post("/v1/covers", body, headers={"X-Forwarded-For": "203.0.113.7"})
    assert_problem(proxied, 403, "forbidden")
    # A bearer token is no way around it: there is none to match
    assert_problem(open_api.get("/v1/failures", headers={
        "Authorization": "Bearer x", "Forwarded": "for=203.0.113.7"}), 403, "forbidden")


@pytest.mark.e2e
def test_bad_input_gets_problem_json_naming_each_field_and_rule(api: Api) -> None:
    bad = api.post("/v1/covers", {"taskId": "", "callBackUrl": "ftp://x/",
                                  "priority": "urgent", "extra": 1})
    problem = assert_problem(bad, 422, "validation")
    assert sorted((e["field"], e["rule"]) for e in problem["errors"]) == [
        ("callBackUrl", "url"), ("extra", "unknown_field"), ("priority", "one_of"),
        ("taskId", "length"), ("taskId", "pattern")]
    assert all(e["message"] for e in problem["errors"])
    assert_problem(api.post("/v1/covers", data=b"{not json"), 400, "bad-request")
    assert_problem(api.post("/v1/covers", data="\xff".encode("latin-1")), 400, "bad-request")
    assert_problem(api.post("/v1/covers", data=b"[" * 50 + b"]" * 50), 400, "bad-request")
    not_object = assert_problem(api.post("/v1/covers", ["x"]), 422, "validation")
    assert not_object["errors"][0]["rule"] == "type"
    # Over COVERS_MAX_API_BYTES: declared (refused unread) and chunked
    assert_problem(api.post("/v1/covers", data=b" " * (MAX_API_BYTES + 1)), 413, "too-large")
    chunks = iter([b" " * 4096] * 3)
    assert_problem(api.post("/v1/covers", data=chunks), 413, "too-large")
    # Unknown paths and methods
    assert_problem(api.get("/v1/nothing"), 404, "not-found")
    wrong_method = assert_problem(api.get("/v1/covers"), 405, "method-not-allowed")
    assert wrong_method["detail"] and api.get("/v1/covers").headers["Allow"] == "POST"


@pytest.mark.e2e
def test_batches_are_all_or_nothing_unless_skip_bad(standin: KieStandin, api: Api) -> None:
    good = [{"taskId": uuid.uuid4().hex, "callBackUrl": APP_CALLBACK} for _ in range(2)]
    items = [good[0], {"callBackUrl": APP_CALLBACK}, good[1], dict(good[0])]
    refused = assert_problem(api.post("/v1/covers/batch", {"items": items}), 422,
                             "validation")
    assert sorted((e["index"], e["field"], e["rule"]) for e in refused["errors"]) == [
        (1, "taskId", "required"), (3, "taskId", "duplicate")]
    # Nothing was queued: no job holds either good music task
    assert get_store().redis.exists(*(keys.music(g["taskId"]) for g in good)) == 0
    accepted = api.post("/v1/covers/batch", {"items": items, "skipBad": True,
                                             "tenant": "acme"})
    assert accepted.status_code == 202
    answer = accepted.json()
    assert (answer["accepted"], answer["refused"]) == (2, 2)
    assert [(r["index"], r["state"]) for r in answer["results"]] == [(0, "queued"),
                                                                     (2, "queued")]
    assert {e["index"] for e in answer["errors"]} == {1, 3}
    records = [get_cover(r["jobId"]) for r in answer["results"]]
    assert [(r["music_task_id"], r["priority"], r["tenant"]) for r in records] == [
        (good[0]["taskId"], "bulk", "acme"), (good[1]["taskId"], "bulk", "acme")]
    # Idempotent: the same batch again gives the same jobs
    again = api.post("/v1/covers/batch", {"items": good}).json()
    assert [r["jobId"] for r in again["results"]] == [r["jobId"] for r in answer["results"]]
    # More than COVERS_API_MAX_BATCH items
    too_many = assert_problem(api.post("/v1/covers/batch", {"items": good * MAX_BATCH}),
                              422, "validation")
    assert [(e["field"], e["rule"]) for e in too_many["errors"]] == [("items", "max_items")]


@pytest.mark.e2e
def test_failures_filter_and_retry(standin: KieStandin, api: Api) -> None:
    store = get_store()
    jobs = [api.post("/v1/covers", {"taskId": uuid.uuid4().hex,
                                    "callBackUrl": APP_CALLBACK}).json()["jobId"]
            for _ in range(3)]
    store.finish(jobs[0], error=NotFound("no such music task", 404))
    store.finish(jobs[1], error=UpstreamError("Kie answered 500", 500))
    store.finish(jobs[2], error=UpstreamError("Kie answered 502", 502))
    listed = api.get("/v1/failures")
    assert listed.status_code == 200
    newest_first = [r["job_id"] for r in listed.json()["failures"]]
    assert sorted(newest_first) == sorted(jobs)
    times = [r["last_failed_at"] for r in listed.json()["failures"]]
    assert times == sorted(times, reverse=True)
    assert listed.json()["total"] == 3 and listed.json()["limit"] == 50
    by_kind = api.get("/v1/failures", params={"kind": "not_found"}).json()
    assert [r["job_id"] for r in by_kind["failures"]] == [jobs[0]] and by_kind["total"] == 1
    by_code = api.get("/v1/failures", params={"code": "500"}).json()
    assert [r["job_id"] for r in by_code["failures"]] == [jobs[1]]
    page = api.get("/v1/failures", params={"limit": "1", "offset": "1"}).json()
    assert [r["job_id"] for r in page["failures"]] == newest_first[1:2]
    bad = assert_problem(api.get("/v1/failures", params={"limit": "0", "code": "x",
                                                         "colour": "red"}), 422, "validation")
    assert sorted((e["field"], e["rule"]) for e in bad["errors"]) == [
        ("code", "pattern"), ("colour", "unknown_field"), ("limit", "range")]
    # By time, as the console filters: since/until in unix seconds
    now = time.time()
    assert api.get("/v1/failures", params={"since": f"{now - 600:.3f}"}).json()["total"] == 3
    assert api.get("/v1/failures", params={"since": f"{now + 600:.0f}"}).json()["total"] == 0
    assert api.get("/v1/failures", params={"until": f"{now - 600:.0f}"}).json()["total"] == 0
    late = assert_problem(api.get("/v1/failures", params={"until": "yesterday"}), 422,
                          "validation")
    assert [(e["field"], e["rule"]) for e in late["errors"]] == [("until", "type")]
    # Retry: queued again under its own id, then refused while not failed
    retried = api.post(f"/v1/covers/{jobs[1]}/retry")
    assert retried.status_code == 202 and retried.headers["Location"] == f"/v1/covers/{jobs[1]}"
    assert retried.json() == {"jobId": jobs[1], "state": "queued", "result": "ok"}
    assert get_cover(jobs[1])["retry_rounds"] == 1
    twice = assert_problem(api.post(f"/v1/covers/{jobs[1]}/retry"), 409, "conflict")
    assert twice["result"] == "not_failed" and twice["jobId"] == jobs[1]
    assert api.get("/v1/failures").json()["total"] == 2


@pytest.mark.e2e
def test_a_cover_queued_over_http_is_made_and_read_over_http(
    standin: KieStandin, api: Api, start_worker: StartWorker
) -> None:
    start_worker(queue=api.queue)
    task = uuid.uuid4().hex
    job_id = api.post("/v1/covers", {"taskId": task, "callBackUrl": APP_CALLBACK}).json()[
        "jobId"]
    wait_until(lambda: api.get(f"/v1/covers/{job_id}").json()["state"] == "succeeded", 30,
               0.1, "the cover over HTTP")
    record = api.get(f"/v1/covers/{job_id}").json()
    assert record["images"] and record["cover_task_id"] and record == get_cover(job_id)
    assert standin.paid()[task] == 1
    # A succeeded job is the music task's answer from now on: same id, nothing paid again
    assert api.post("/v1/covers", {"taskId": task, "callBackUrl": APP_CALLBACK}).json() == {
        "jobId": job_id, "state": "succeeded"}
    assert standin.paid()[task] == 1


@pytest.mark.e2e
def test_an_unknown_job_is_a_404_problem(api: Api) -> None:
    for job_id in (str(uuid.uuid4()), "a%2Fb", "x" * 200, "%C3%A9"):
        assert_problem(api.get(f"/v1/covers/{job_id}"), 404, "not-found")
        assert_problem(api.post(f"/v1/covers/{job_id}/retry"), 404, "not-found")


@pytest.mark.e2e
def test_the_served_document_is_the_repository_file(api: Api) -> None:
    served = requests.get(api.base + "/v1/openapi.json", timeout=10)
    assert served.status_code == 200 and served.headers["Content-Type"] == "application/json"
    assert served.content == OPENAPI_FILE.read_bytes()


# --- property-based: schemathesis against the live API -----------------------------

#: Bounded and deterministic: a fixed seed, derandomized, 25 examples per operation,
#: the schema's examples and generated data (valid and invalid); no coverage or
#: stateful phase (they would take minutes).
SCHEMATHESIS_CONFIG = SchemathesisConfig.from_dict({
    "seed": 16,
    "generation": {"mode": "all", "max-examples": 25, "deterministic": True,
                   "database": "none"},
    "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
})
SCHEMA = schemathesis.openapi.from_path(OPENAPI_FILE, config=SCHEMATHESIS_CONFIG)


@pytest.fixture(scope="module")
def known_jobs(api: Api) -> list[str]:
    """A queued job and a failed one, for the fuzzed job ids to hit now and then."""
    made = [api.post("/v1/covers", {"taskId": uuid.uuid4().hex, "callBackUrl": APP_CALLBACK,
                                    "tenant": "fuzz"}).json()["jobId"] for _ in range(2)]
    get_store().finish(made[1], error=UpstreamError("Kie answered 500", 500))
    return made


@pytest.mark.e2e
@SCHEMA.parametrize()
@settings(max_examples=25, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    case: schemathesis.Case[Any], api: Api, known_jobs: list[str]
) -> None:
    # Random job ids are all unknown (404): swap two of every three for a real job's id,
    # chosen by the generated id's length (deterministic), so records (200), retries
    # (202, then 409) and a non-empty failures list are checked against the schema too.
    params = case.path_parameters
    if params and "jobId" in params and len(str(params["jobId"])) % 3:
        params["jobId"] = known_jobs[len(str(params["jobId"])) % 2]
    case.call_and_validate(base_url=api.base, headers=api.headers, timeout=10, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance,
        response_schema_conformance, negative_data_rejection])
