"""The stand-in's real HTTP answers and callbacks, validated against the OpenAPI contract.

``standin/openapi/kie-cover.yaml`` is written from Kie's documents; openapi-core
checks every code (in both forms), every record-info status and every callback
the stand-in produces against it, and shows the off-document variants (kept for
testing clients) are refused by it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import yaml
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.testing import MockRequest, MockResponse
from werkzeug.datastructures import Headers, ImmutableMultiDict

from kie_covers.standin import KieStandin, StandinConfig
from kie_covers.standin.covers import CALLBACK_FAILURES, STATUSES
from kie_covers.standin.protocol import OPENAPI_PATH
from tests.notice_apps import FastApp

KEY = "standin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GENERATE = "/api/v1/suno/cover/generate"
RECORD_INFO = "/api/v1/suno/cover/record-info"
CREDIT = "/api/v1/chat/credit"
PATHS = {"generate": GENERATE, "record-info": RECORD_INFO, "credit": CREDIT}
NOWHERE = "http://127.0.0.1:9/callback"
KIE_HOST = "https://api.kie.ai"  # the document's server; the stand-in serves the same paths

DOCUMENT: dict[str, Any] = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
SPEC = OpenAPI.from_dict(DOCUMENT)


def _documented_codes(endpoint: str) -> list[int]:
    """The error codes the document lists for ``endpoint`` (its HTTP error statuses)."""
    operation = DOCUMENT["paths"][PATHS[endpoint]]
    method = "post" if endpoint == "generate" else "get"
    return sorted(int(status) for status in operation[method]["responses"] if status != "200")


#: (endpoint, code) for every documented error code of every endpoint.
DOCUMENTED_ERRORS = [
    (endpoint, code) for endpoint in PATHS for code in _documented_codes(endpoint)
]
#: The documented failure codes of the cover callback.
CALLBACK_CODES: list[int] = DOCUMENT["components"]["schemas"]["CoverCallback"]["properties"][
    "code"
]["enum"]


# -- helpers ---------------------------------------------------------------------


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only, never through a proxy
    return session


@pytest.fixture(scope="module")
def kie() -> Iterator[KieStandin]:
    with KieStandin(StandinConfig(cover_seconds=1.0, rate_limit=None)) as standin:
        yield standin


@pytest.fixture
def fresh(kie: KieStandin) -> KieStandin:
    kie.reset()
    return kie


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with _session() as session:
        yield session


def _call(
    http: requests.Session,
    kie: KieStandin,
    endpoint: str,
    *,
    music_id: str = "music",
    task_id: str = "nope",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """One real call to ``endpoint``; validated against the document by the caller."""
    sent = {**AUTH, **(headers or {})}
    if endpoint == "generate":
        return http.post(
            kie.base_url + GENERATE,
            json={"taskId": music_id, "callBackUrl": NOWHERE},
            headers=sent,
            timeout=5,
        )
    if endpoint == "record-info":
        return http.get(
            kie.base_url + RECORD_INFO, params={"taskId": task_id}, headers=sent, timeout=5
        )
    return http.get(kie.base_url + CREDIT, headers=sent, timeout=5)


def _validate(endpoint: str, response: requests.Response, *, task_id: str = "nope") -> None:
    """Validate a real answer of ``endpoint`` with openapi-core; raises if off the contract."""
    if endpoint == "generate":
        request = MockRequest(
            KIE_HOST, "post", GENERATE, headers=AUTH,
            data=json.dumps({"taskId": "music", "callBackUrl": NOWHERE}).encode(),
        )
    else:
        args = {"taskId": task_id} if endpoint == "record-info" else None
        request = MockRequest(KIE_HOST, "get", PATHS[endpoint], headers=AUTH, args=args)
    SPEC.validate_request(request)
    answer = MockResponse(
        response.content,
        status_code=response.status_code,
        headers=dict(response.headers),
        content_type=response.headers.get("Content-Type", ""),
    )
    SPEC.validate_response(request, answer)


@dataclass
class _Webhook:
    """A callback as openapi-core's WebhookRequest protocol wants it."""

    headers: dict[str, str]
    body: bytes
    name: str = "coverCallback"
    method: str = "post"
    content_type: str = "application/json"
    parameters: RequestParameters = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = RequestParameters(
            path={}, query=ImmutableMultiDict(), header=Headers(self.headers),
            cookie=ImmutableMultiDict(),
        )


def _wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the document ----------------------------------------------------------------


def test_the_document_is_valid_openapi_and_lists_the_documented_codes() -> None:
    # openapi-core checked the document on load (OpenAPI.from_dict validates it)
    assert DOCUMENT["openapi"].startswith("3.1")
    assert _documented_codes("generate") == [400, 401, 402, 404, 409, 422, 429, 455, 500]
    assert _documented_codes("credit") == [401, 402, 404, 422, 429, 455, 500, 505]
    assert CALLBACK_CODES == [200, 400, 408, 500, 501, 531]
    # The stand-in's status words and callback failure codes are the document's
    details = DOCUMENT["components"]["schemas"]["CoverDetails"]["properties"]
    assert details["status"]["enum"] == list(STATUSES)
    assert sorted(CALLBACK_FAILURES) == [code for code in CALLBACK_CODES if code != 200]


# -- every documented code, in every form ------------------------------------------


@pytest.mark.parametrize(
    "how",
    ["fault-form-status", "fault-form-body", "body-fault", "header-status", "header-body"],
)
@pytest.mark.parametrize(("endpoint", "code"), DOCUMENTED_ERRORS)
def test_every_documented_error_code_in_both_forms_matches_the_document(
    fresh: KieStandin, http: requests.Session, endpoint: str, code: int, how: str
) -> None:
    headers: dict[str, str] = {}
    if how == "fault-form-status":
        fresh.inject(endpoint, str(code), form="status")
    elif how == "fault-form-body":
        fresh.inject(endpoint, str(code), form="body")
    elif how == "body-fault":
        fresh.inject(endpoint, f"body-{code}")
    else:
        fresh.inject(endpoint, str(code))
        headers["X-Standin-Style"] = "code-in-status" if how == "header-status" else "code-in-body"
    response = _call(http, fresh, endpoint, headers=headers)
    in_body = how in ("fault-form-body", "body-fault", "header-body")
    assert response.status_code == (200 if in_body else code)
    body = response.json()
    assert body["code"] == code and body["msg"]
    assert "data" not in body  # as the docs show error answers
    _validate(endpoint, response)


@pytest.mark.parametrize("code", [400, 409])
@pytest.mark.parametrize("form", ["status", "body"])
def test_a_conflict_fault_naming_a_cover_matches_the_document(
    fresh: KieStandin, http: requests.Session, code: int, form: str
) -> None:
    fresh.inject("generate", str(code), form=form, data={"taskId": "c0ffee"})
    response = _call(http, fresh, "generate")
    assert response.json() == {
        "code": code, "msg": response.json()["msg"], "data": {"taskId": "c0ffee"}
    }
    _validate("generate", response)


# -- the stand-in's own answers ------------------------------------------------------


@pytest.mark.parametrize("form", ["code-in-status", "code-in-body"])
def test_real_answers_match_the_document(
    fresh: KieStandin, http: requests.Session, form: str
) -> None:
    style = {"X-Standin-Style": form}
    status = (lambda code: code) if form == "code-in-status" else (lambda code: 200)
    seen: list[tuple[str, int, int]] = []

    def check(endpoint: str, response: requests.Response, task_id: str = "nope") -> None:
        _validate(endpoint, response, task_id=task_id)
        seen.append((endpoint, response.status_code, response.json()["code"]))

    accepted = _call(http, fresh, "generate", music_id="m-1", headers=style)
    check("generate", accepted)
    cover_id = accepted.json()["data"]["taskId"]
    check("generate", _call(http, fresh, "generate", music_id="m-1", headers=style))
    check(
        "generate",
        _call(http, fresh, "generate", music_id="m-1",
              headers={"X-Standin-Style": f"{form}, duplicate-409"}),
    )
    check("generate", _call(http, fresh, "generate", music_id="notfound-1", headers=style))
    check("generate", _call(http, fresh, "generate", headers={**style, "Authorization": "x"}))
    bad = http.post(fresh.base_url + GENERATE, json={"taskId": "m"}, headers={**AUTH, **style},
                    timeout=5)
    check("generate", bad)
    fresh.set_rate_limit((1, 60.0))
    check("generate", _call(http, fresh, "generate", music_id="m-2", headers=style))
    fresh.set_rate_limit(None)
    fresh.set_credits(0)
    check("generate", _call(http, fresh, "generate", music_id="m-3", headers=style))
    check("credit", _call(http, fresh, "credit", headers=style))
    check("credit", _call(http, fresh, "credit", headers={**style, "Authorization": "x"}))
    check("record-info", _call(http, fresh, "record-info", task_id=cover_id, headers=style),
          cover_id)
    check("record-info", _call(http, fresh, "record-info", task_id="nope", headers=style))
    assert [(endpoint, body) for endpoint, _, body in seen] == [
        ("generate", 200), ("generate", 400), ("generate", 409), ("generate", 404),
        ("generate", 401), ("generate", 422), ("generate", 429), ("generate", 402),
        ("credit", 200), ("credit", 401), ("record-info", 200), ("record-info", 404),
    ]
    assert all(http_status == (200 if body == 200 else status(body))
               for _, http_status, body in seen)


@pytest.mark.e2e  # about a second: it waits for covers to pass through every phase
def test_every_record_info_status_matches_the_document(
    fresh: KieStandin, http: requests.Session
) -> None:
    # Given covers that will succeed, fail generating and fail creating
    ids = {
        music: _call(http, fresh, "generate", music_id=music).json()["data"]["taskId"]
        for music in ("ok-1", "genfail-1", "createfail-1")
    }
    # When each is asked for until it ends, every answer is checked
    seen: set[tuple[str, int, str]] = set()
    for music, cover_id in ids.items():
        while True:
            response = _call(http, fresh, "record-info", task_id=cover_id)
            _validate("record-info", response, task_id=cover_id)
            data = response.json()["data"]
            seen.add((music, data["successFlag"], data["status"]))
            if data["successFlag"] in (1, 3):
                break
            time.sleep(0.01)
    # Then every documented status (and every successFlag) was produced
    assert {status for _, _, status in seen} == {
        "PENDING", "SUCCESS", "CREATE_TASK_FAILED", "GENERATE_COVER_FAILED"
    }
    assert {flag for _, flag, _ in seen} == {0, 2, 1, 3}
    assert ("ok-1", 1, "SUCCESS") in seen
    assert ("genfail-1", 3, "GENERATE_COVER_FAILED") in seen
    assert ("createfail-1", 3, "CREATE_TASK_FAILED") in seen


# -- callbacks ------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True])
def test_every_callback_code_matches_the_document(http: requests.Session, signed: bool) -> None:
    receiver = FastApp()
    config = StandinConfig(
        cover_seconds=0.05, rate_limit=None, webhook_hmac_key="hmac-key" if signed else None
    )
    # One cover per documented callback code, and a CREATE_TASK_FAILED one (callback 500)
    music_ids = [
        "ok-callback" if code == 200 else f"genfail{code}-x" for code in CALLBACK_CODES
    ] + ["createfail-x"]
    try:
        with KieStandin(config) as kie:
            for music in music_ids:
                response = http.post(kie.base_url + GENERATE, headers=AUTH, timeout=5,
                                     json={"taskId": music, "callBackUrl": receiver.url})
                assert response.json()["code"] == 200
            _wait_for(lambda: len(receiver.received) == len(music_ids))
            credits = http.get(kie.base_url + CREDIT, headers=AUTH, timeout=5).json()["data"]
    finally:
        receiver.stop()
    codes = []
    for callback in receiver.received:
        SPEC.validate_webhook_request(_Webhook(callback.headers, callback.body))
        assert ("x-webhook-signature" in callback.headers) is signed
        codes.append(callback.json()["code"])
    assert sorted(codes) == sorted([*CALLBACK_CODES, 500])
    # The 531 cover's credits came back ("your credits have been refunded")
    assert credits == 1000.0 - len(music_ids) + 1


# -- the off-document variants are not the contract ----------------------------------


@pytest.mark.parametrize(
    ("endpoint", "setup", "header"),
    [
        ("record-info", None, "null-fields"),
        ("record-info", None, "epoch-times"),
        ("generate", "401", "data-null"),
        ("generate", "433", "code-in-status"),
        ("generate", "433", "code-in-body"),
        ("credit", "no-data", ""),
        ("generate", "html", ""),
        ("generate", "malformed", ""),
    ],
)
def test_off_document_variants_fail_the_document(
    fresh: KieStandin, http: requests.Session, endpoint: str, setup: str | None, header: str
) -> None:
    # A validator that let these through would prove nothing about the rest.
    task_id = "nope"
    if endpoint == "record-info":
        task_id = _call(http, fresh, "generate").json()["data"]["taskId"]
    if setup is not None:
        fresh.inject(endpoint, setup)
    response = _call(http, fresh, endpoint, task_id=task_id,
                     headers={"X-Standin-Style": header} if header else None)
    with pytest.raises(Exception) as raised:
        _validate(endpoint, response, task_id=task_id)
    assert "openapi" in type(raised.value).__module__
