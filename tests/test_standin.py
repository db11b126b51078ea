"""Tests of the Kie stand-in, over real HTTP on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from kie_covers import standin as standin_package
from kie_covers.standin import KieStandin, StandinConfig
from kie_covers.standin.covers import (
    CALLBACK_FAILURES,
    CREATE_FAILING_MUSIC_PREFIX,
    FAILING_MUSIC_PREFIX,
)
from kie_covers.standin.faults import BODY_FAULTS, ENVELOPE_FAULTS, FAULT_KINDS
from kie_covers.standin.png import PNG_SIGNATURE, cover_png, encode_png
from kie_covers.standin.routes import MISSING_MUSIC_PREFIX
from kie_covers.standin.style import STYLE_TOKENS
from tests.notice_apps import FastApp

KEY = "standin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GENERATE = "/api/v1/suno/cover/generate"
RECORD_INFO = "/api/v1/suno/cover/record-info"
CREDIT = "/api/v1/chat/credit"
COVER_S = 0.2  # short covers keep the file fast
NOWHERE = "http://127.0.0.1:9/callback"  # loopback discard port: nothing listens


# -- helpers ---------------------------------------------------------------------


def _session() -> requests.Session:
    session = requests.Session()
    # A proxy from the environment must never see loopback traffic.
    session.trust_env = False
    return session


def _iso_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO-8601 UTC time as Kie writes it."""
    assert text.endswith("Z") and len(text) == len("2025-01-15T10:33:01.000Z")
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _check_png(data: bytes) -> tuple[int, int]:
    """Parse a PNG fully (chunks, CRCs, pixel data size); return (width, height)."""
    assert data.startswith(PNG_SIGNATURE)
    pos = len(PNG_SIGNATURE)
    chunks: list[tuple[bytes, bytes]] = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == crc
        chunks.append((tag, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour) == (8, 2)
    pixels = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    assert len(pixels) == height * (1 + width * 3)
    return width, height


@pytest.fixture
def kie() -> Iterator[KieStandin]:
    with KieStandin(StandinConfig(cover_seconds=COVER_S)) as standin:
        yield standin


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with _session() as session:
        yield session


@pytest.fixture
def receiver() -> Iterator[FastApp]:
    """A loopback app that takes the stand-in's callbacks."""
    app = FastApp()
    yield app
    app.stop()


def _generate(
    http: requests.Session,
    kie: KieStandin,
    music_id: str,
    callback: str = NOWHERE,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return http.post(
        kie.base_url + GENERATE,
        json={"taskId": music_id, "callBackUrl": callback},
        headers=AUTH if headers is None else headers,
        timeout=5,
    )


def _info(http: requests.Session, kie: KieStandin, cover_id: str) -> dict[str, Any]:
    response = http.get(
        kie.base_url + RECORD_INFO, params={"taskId": cover_id}, headers=AUTH, timeout=5
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["code"] == 200
    data: dict[str, Any] = body["data"]
    return data


def _wait_finished(http: requests.Session, kie: KieStandin, cover_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 3.0
    while True:
        data = _info(http, kie, cover_id)
        if data["successFlag"] in (1, 3) or time.monotonic() > deadline:
            return data
        time.sleep(0.02)


def _credits(http: requests.Session, kie: KieStandin) -> float:
    body = http.get(kie.base_url + CREDIT, headers=AUTH, timeout=5).json()
    assert body["code"] == 200
    return float(body["data"])


# -- PNG ---------------------------------------------------------------------------


def test_png_encoder_round_trip() -> None:
    assert _check_png(encode_png(2, 1, bytes([255, 0, 0, 0, 255, 0]))) == (2, 1)
    assert cover_png("a", 0) == cover_png("a", 0)
    assert len({cover_png("a", 0), cover_png("a", 1), cover_png("b", 0)}) == 3
    with pytest.raises(ValueError):
        encode_png(2, 2, b"\x00")


# -- happy path ----------------------------------------------------------------------


def test_generate_then_poll_to_success_with_two_distinct_pngs(
    kie: KieStandin, http: requests.Session
) -> None:
    first = _generate(http, kie, "music-1")
    assert first.status_code == 200
    assert first.headers["Content-Type"].startswith("application/json")
    body = first.json()
    assert body["code"] == 200 and body["msg"] == "success"
    cover_1 = body["data"]["taskId"]
    cover_2 = _generate(http, kie, "music-2").json()["data"]["taskId"]
    assert cover_1 != cover_2

    pending = _info(http, kie, cover_1)
    assert pending["successFlag"] == 0 and pending["status"] == "PENDING"
    # As Kie documents it: an object response, "" for the message, ISO-8601 times,
    # errorCode and completeTime not given before the end
    assert pending["response"] == {} and pending["errorMessage"] == ""
    assert "completeTime" not in pending and "errorCode" not in pending
    assert pending["parentTaskId"] == "music-1" and pending["callbackUrl"] == NOWHERE
    assert _iso_ms(pending["createTime"]) <= time.time() * 1000

    images: list[bytes] = []
    for cover_id in (cover_1, cover_2):
        done = _wait_finished(http, kie, cover_id)
        assert done["successFlag"] == 1 and done["status"] == "SUCCESS"
        assert done["errorMessage"] == "" and done["errorCode"] == 200
        assert _iso_ms(done["completeTime"]) >= _iso_ms(done["createTime"])
        urls = done["response"]["images"]
        assert urls == [f"{kie.base_url}/files/{cover_id}/{n}.png" for n in (0, 1)]
        for url in urls:
            picture = http.get(url, timeout=5)  # no auth needed, like Kie's file host
            assert picture.status_code == 200
            assert picture.headers["Content-Type"] == "image/png"
            assert _check_png(picture.content) == (64, 64)
            images.append(picture.content)
    assert len(set(images)) == 4  # per cover and per index
    assert http.get(urls[0], timeout=5).content == images[2]  # deterministic

    assert kie.paid() == {"music-1": 1, "music-2": 1}
    assert _credits(http, kie) == 998.0
    assert kie.counts()["generate"] == 2
    assert kie.answers()["generate:200"] == 2
    assert len(kie.generate_times()) == 2


def test_progress_goes_pending_generating_success(http: requests.Session) -> None:
    cover_s = 1.6  # pending for the first half, generating for the second
    with KieStandin(StandinConfig(cover_seconds=cover_s)) as kie:
        before = time.monotonic()
        cover_id = _generate(http, kie, "music").json()["data"]["taskId"]
        after = time.monotonic()
        # Asked again and again until it ends, noting when each answer was asked for
        # and came (the stand-in runs in this process: the same monotonic clock)
        seen: list[tuple[float, float, dict[str, Any]]] = []
        while not seen or seen[-1][2]["successFlag"] not in (1, 3):
            asked = time.monotonic()
            data = _info(http, kie, cover_id)
            seen.append((asked, time.monotonic(), data))
            assert asked < after + 10 * cover_s, "the cover never finished"
            time.sleep(0.02)
    # Then the answers go pending, generating, success, in that order, never back
    flags = [data["successFlag"] for _, _, data in seen]
    assert flags == sorted(flags, key=[0, 2, 1].index)
    assert set(flags) == {0, 2, 1}
    # And each is the answer its moment calls for (a phase never comes early or late)
    for asked, answered, data in seen:
        if data["successFlag"] == 0:
            assert data["status"] == "PENDING" and asked < after + cover_s / 2
        elif data["successFlag"] == 2:
            # Kie's docs list no status word for "generating": it still reads PENDING
            assert data["status"] == "PENDING" and data["response"] == {}
            assert answered >= before + cover_s / 2 and asked < after + cover_s
        else:
            assert data["status"] == "SUCCESS" and answered >= before + cover_s


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Bearer"}],
)
def test_unauthorised_calls_answer_401(
    kie: KieStandin, http: requests.Session, headers: dict[str, str]
) -> None:
    calls = [
        http.post(kie.base_url + GENERATE, json={}, headers=headers, timeout=5),
        http.get(kie.base_url + RECORD_INFO, params={"taskId": "x"}, headers=headers, timeout=5),
        http.get(kie.base_url + CREDIT, headers=headers, timeout=5),
    ]
    for response in calls:
        assert response.status_code == 401
        # As Kie documents it: no "data" on an error answer
        assert response.json() == {"code": 401, "msg": "You do not have access permissions"}
    assert kie.answers() == {"generate:401": 1, "record-info:401": 1, "credit:401": 1}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"not json", "taskId"),
        (b"[1, 2]", "taskId"),
        (json.dumps({"callBackUrl": NOWHERE}).encode(), "taskId"),
        (json.dumps({"taskId": "", "callBackUrl": NOWHERE}).encode(), "taskId"),
        (json.dumps({"taskId": 5, "callBackUrl": NOWHERE}).encode(), "taskId"),
        (json.dumps({"taskId": "m"}).encode(), "callBackUrl"),
        (json.dumps({"taskId": "m", "callBackUrl": "/relative"}).encode(), "callBackUrl"),
        (json.dumps({"taskId": "m", "callBackUrl": "ftp://x/cb"}).encode(), "callBackUrl"),
    ],
)
def test_invalid_generate_body_answers_422_naming_the_field(
    kie: KieStandin, http: requests.Session, payload: bytes, field: str
) -> None:
    response = http.post(
        kie.base_url + GENERATE,
        data=payload,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == 422 and field in body["msg"]
    assert kie.paid() == {}


def test_record_info_without_task_id_answers_422(kie: KieStandin, http: requests.Session) -> None:
    response = http.get(kie.base_url + RECORD_INFO, headers=AUTH, timeout=5)
    assert response.status_code == 422 and response.json()["code"] == 422


def test_not_found_answers(kie: KieStandin, http: requests.Session) -> None:
    response = _generate(http, kie, "notfound-123")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "msg": "music task not found"}
    unknown = http.get(
        kie.base_url + RECORD_INFO, params={"taskId": "nope"}, headers=AUTH, timeout=5
    )
    assert unknown.status_code == 404 and unknown.json()["msg"] == "task not found"
    assert http.get(kie.base_url + "/api/v1/other", headers=AUTH, timeout=5).status_code == 404
    assert http.get(kie.base_url + "/elsewhere", timeout=5).json()["code"] == 404
    assert http.get(kie.base_url + "/files/nope/0.png", timeout=5).status_code == 404
    assert kie.paid() == {}


def test_body_over_one_mib_answers_413(kie: KieStandin, http: requests.Session) -> None:
    response = http.post(
        kie.base_url + GENERATE, data=b"x" * ((1 << 20) + 1), headers=AUTH, timeout=5
    )
    assert response.status_code == 413 and response.json()["code"] == 413


def test_duplicate_generate_answers_400_with_existing_cover_and_is_free(
    kie: KieStandin, http: requests.Session
) -> None:
    cover_id = _generate(http, kie, "music").json()["data"]["taskId"]
    for _ in range(2):  # while pending, and again
        again = _generate(http, kie, "music")
        assert again.status_code == 400
        assert again.json() == {
            "code": 400,
            "msg": "cover already generated for this task",
            "data": {"taskId": cover_id},
        }
    _wait_finished(http, kie, cover_id)
    assert _generate(http, kie, "music").json()["data"] == {"taskId": cover_id}
    assert kie.paid() == {"music": 1}
    assert _credits(http, kie) == 999.0
    assert kie.answers()["generate:400"] == 3


def _retry_after_range(per_s: float, first_sent: float) -> tuple[int, int]:
    """Retry-After (whole seconds, rounded up) for a window that a call sent at or after
    `first_sent` opened: at most `per_s`, at least what is left of it now."""
    return max(1, math.ceil(per_s - (time.monotonic() - first_sent))), math.ceil(per_s)


def test_rate_limit_answers_429_with_retry_after(http: requests.Session) -> None:
    per_s = 60.0  # long enough that no call below leaves the window on a slow machine
    config = StandinConfig(cover_seconds=COVER_S, api_keys=(KEY, "other-key"),
                           rate_limit=(3, per_s))
    with KieStandin(config) as kie:
        first_sent = time.monotonic()
        for n in range(3):
            assert _generate(http, kie, f"m{n}").status_code == 200
        limited = _generate(http, kie, "m3")
        assert limited.status_code == 429
        # Retry-After is what is left of the window the first call opened
        low, high = _retry_after_range(per_s, first_sent)
        assert low <= int(limited.headers["Retry-After"]) <= high
        assert limited.json()["msg"] == "Your call frequency is too high. Please try again later."
        # The limit comes before the duplicate check, to protect the account.
        assert _generate(http, kie, "m0").status_code == 429
        # Per key: another key has its own window.
        other = {"Authorization": "Bearer other-key"}
        assert _generate(http, kie, "m3", headers=other).status_code == 200
        assert kie.answers()["generate:429"] == 2
        assert kie.counts()["generate"] == 6
        assert len(kie.generate_times()) == 4
        assert kie.paid() == {"m0": 1, "m1": 1, "m2": 1, "m3": 1}

        kie.set_rate_limit(None)
        assert _generate(http, kie, "m4").status_code == 200
        kie.set_rate_limit((1, 0.1))
        time.sleep(0.15)  # the window slides: old generations leave it
        assert _generate(http, kie, "m5").status_code == 200
        # (a long window again, so m5 is surely still in it when m6 comes)
        kie.set_rate_limit((1, per_s))
        assert _generate(http, kie, "m6").status_code == 429


def test_insufficient_credits_answers_402_until_restored(
    kie: KieStandin, http: requests.Session
) -> None:
    kie.set_credits(0.5)
    response = _generate(http, kie, "music")
    assert response.status_code == 402
    assert response.json() == {"code": 402, "msg": "insufficient credits"}
    assert kie.paid() == {} and _credits(http, kie) == 0.5
    kie.set_credits(10)
    assert _generate(http, kie, "music").status_code == 200
    assert _credits(http, kie) == 9.0


@pytest.mark.parametrize(
    ("music", "status"),
    [("genfail-1", "GENERATE_COVER_FAILED"), ("createfail-1", "CREATE_TASK_FAILED")],
)
def test_failing_prefixes_make_the_cover_fail(
    kie: KieStandin, http: requests.Session, music: str, status: str
) -> None:
    cover_id = _generate(http, kie, music).json()["data"]["taskId"]
    data = _wait_finished(http, kie, cover_id)
    assert data["successFlag"] == 3 and data["status"] == status
    assert data["errorCode"] == 500 and data["errorMessage"]
    assert data["response"] == {} and _iso_ms(data["completeTime"]) >= _iso_ms(data["createTime"])
    assert http.get(f"{kie.base_url}/files/{cover_id}/0.png", timeout=5).status_code == 404
    assert kie.paid() == {music: 1}


@pytest.mark.parametrize(
    ("music", "code"),
    [
        ("genfail-a", 501),
        ("createfail-a", 500),
        ("genfail400-a", 400),
        ("genfail408-a", 408),
        ("genfail500-a", 500),
        ("genfail531-a", 531),
        ("createfail531", 531),
        ("genfail4001", 501),  # the code needs "-" or the end after it: a uuid never matches
    ],
)
def test_a_failing_id_chooses_the_callback_code(
    http: requests.Session, receiver: FastApp, music: str, code: int
) -> None:
    with KieStandin(StandinConfig(cover_seconds=0.05)) as kie:
        cover_id = _generate(http, kie, music, receiver.url).json()["data"]["taskId"]
        assert _wait_until(lambda: len(receiver.received) == 1)
        assert _wait_until(lambda: kie.callbacks_sent() == 1)
        body = receiver.received[0].json()
        assert body["code"] == code and body["msg"]
        assert body["data"] == {"taskId": cover_id}  # no images on a failure
        # 531: "Your credits have been refunded"; every other failure stays charged
        assert _credits(http, kie) == (1000.0 if code == 531 else 999.0)
        assert kie.paid() == {music: 1}


# -- callbacks ---------------------------------------------------------------------------


def test_signed_callbacks_verify(http: requests.Session, receiver: FastApp) -> None:
    secret = "webhook-secret"
    config = StandinConfig(cover_seconds=COVER_S, webhook_hmac_key=secret)
    with KieStandin(config) as kie:
        started = int(time.time())  # whole seconds, as the timestamp header is
        ok_id = _generate(http, kie, "music", receiver.url).json()["data"]["taskId"]
        failed_id = _generate(http, kie, "genfail-x", receiver.url).json()["data"]["taskId"]
        assert _wait_until(lambda: len(receiver.received) == 2)
        assert _wait_until(lambda: kie.callbacks_sent() == 2)  # counted once the POST returns
        by_id = {r.json()["data"]["taskId"]: (r.headers, r.json()) for r in receiver.received}

        headers, body = by_id[ok_id]
        assert body == {
            "code": 200,
            "msg": "success",
            "data": {"taskId": ok_id, "images": _info(http, kie, ok_id)["response"]["images"]},
        }
        # The timestamp is the time of sending: after the generate, before we read it
        timestamp = headers["x-webhook-timestamp"]
        assert started <= int(timestamp) <= time.time()
        expected = base64.b64encode(
            hmac.new(secret.encode(), f"{ok_id}.{timestamp}".encode(), hashlib.sha256).digest()
        ).decode()
        assert hmac.compare_digest(headers["x-webhook-signature"], expected)

        headers, body = by_id[failed_id]
        assert body == {
            "code": 501,
            "msg": "Cover generation failed",
            "data": {"taskId": failed_id},
        }
        assert "x-webhook-signature" in headers


def test_unsigned_callback_has_no_signature(
    kie: KieStandin, http: requests.Session, receiver: FastApp
) -> None:
    _generate(http, kie, "music", receiver.url)
    assert _wait_until(lambda: len(receiver.received) == 1)
    assert "x-webhook-signature" not in receiver.received[0].headers


def test_callback_modes(kie: KieStandin, http: requests.Session, receiver: FastApp) -> None:
    kie.set_callback_mode("drop")
    _generate(http, kie, "dropped", receiver.url)
    kie.set_callback_mode("duplicate")
    _generate(http, kie, "twice", receiver.url)
    assert _wait_until(lambda: len(receiver.received) == 2)
    time.sleep(COVER_S)
    assert len(receiver.received) == 2 and kie.callbacks_sent() == 2
    assert {r.json()["data"]["taskId"] for r in receiver.received} == {
        _generate(http, kie, "twice").json()["data"]["taskId"]
    }

    kie.set_callback_mode("delay", delay_s=0.4)
    started = time.monotonic()
    _generate(http, kie, "late", receiver.url)
    assert _wait_until(lambda: len(receiver.received) == 3)
    assert time.monotonic() - started >= COVER_S + 0.4 - 0.05

    # Receiver errors are swallowed and still count as sent.
    failing = FastApp(statuses=[500])
    try:
        kie.set_callback_mode("send")
        _generate(http, kie, "to-failing", failing.url)
        assert _wait_until(lambda: len(failing.received) == 1)
        assert _wait_until(lambda: kie.callbacks_sent() == 4)
    finally:
        failing.stop()


def test_callbacks_off_this_machine_are_never_sent(kie: KieStandin, http: requests.Session) -> None:
    for n, url in enumerate(["https://api.example.com/cb", "http://192.0.2.1/cb"]):
        assert _generate(http, kie, f"m{n}", url).status_code == 200
    time.sleep(COVER_S + 0.2)
    assert kie.callbacks_sent() == 0


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("429", 429, 429),
        ("455", 455, 455),
        ("402", 402, 402),
        ("500", 500, 500),
        ("433", 433, 433),
        ("400", 400, 400),
        ("401", 401, 401),
        ("404", 404, 404),
        ("409", 409, 409),
        ("422", 422, 422),
        ("451", 451, 451),
        ("501", 501, 501),
        ("505", 505, 505),
        ("body-429", 200, 429),
        ("body-455", 200, 455),
        ("body-500", 200, 500),
        ("body-402", 200, 402),
        ("body-409", 200, 409),
        ("body-505", 200, 505),
    ],
)
def test_envelope_faults(
    kie: KieStandin, http: requests.Session, fault: str, status: int, code: int
) -> None:
    kie.inject("generate", fault)
    response = _generate(http, kie, "music", headers={})  # faults come before auth
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code and body["msg"] and "data" not in body
    assert "Retry-After" not in response.headers
    assert kie.paid() == {} and _credits(http, kie) == 1000.0
    assert kie.answers()[f"generate:{code}"] == 1
    assert _generate(http, kie, "music").status_code == 200  # used up


def test_fault_retry_after_header(kie: KieStandin, http: requests.Session) -> None:
    kie.inject("generate", "429", retry_after="3")
    kie.inject("generate", "body-429", retry_after="Wed, 21 Oct 2065 07:28:00 GMT")
    first = _generate(http, kie, "music")
    assert (first.status_code, first.headers["Retry-After"]) == (429, "3")
    second = _generate(http, kie, "music")
    assert second.status_code == 200 and second.json()["code"] == 429
    assert second.headers["Retry-After"] == "Wed, 21 Oct 2065 07:28:00 GMT"


def test_transport_faults(kie: KieStandin, http: requests.Session) -> None:
    kie.inject("generate", "malformed")
    malformed = _generate(http, kie, "music")
    assert malformed.status_code == 200
    assert malformed.headers["Content-Type"].startswith("application/json")
    assert malformed.content == b'{"code": 200, "msg": '
    with pytest.raises(ValueError):
        json.loads(malformed.content)

    kie.inject("generate", "html")
    html = _generate(http, kie, "music")
    assert html.status_code == 502
    assert html.headers["Content-Type"].startswith("text/html")
    assert b"<html>" in html.content

    kie.inject("generate", "empty")
    empty = _generate(http, kie, "music")
    assert (empty.status_code, empty.content) == (200, b"")

    kie.inject("generate", "no-data")
    no_data = _generate(http, kie, "music")
    assert no_data.json() == {"code": 200, "msg": "success", "data": None}

    kie.inject("generate", "reset")
    with pytest.raises(requests.ConnectionError):
        _generate(http, kie, "music")

    assert kie.paid() == {} and _credits(http, kie) == 1000.0
    assert kie.answers() == {
        "generate:malformed": 1,
        "generate:html": 1,
        "generate:empty": 1,
        "generate:no-data": 1,
        "generate:reset": 1,
        "credit:200": 1,
    }
    assert _generate(http, kie, "music").status_code == 200  # the connection recovers


def test_slow_fault_delays_a_normal_answer(kie: KieStandin, http: requests.Session) -> None:
    kie.inject("credit", "slow", delay_s=0.3)
    started = time.monotonic()
    assert _credits(http, kie) == 1000.0
    assert time.monotonic() - started >= 0.29
    kie.inject("credit", "slow", delay_s=0.5)
    with pytest.raises(requests.Timeout):
        http.get(kie.base_url + CREDIT, headers=AUTH, timeout=0.1)


def test_faults_apply_in_order_per_endpoint_and_until_cleared(
    kie: KieStandin, http: requests.Session
) -> None:
    kie.inject("record-info", "500", times=2)
    kie.inject("any", "455")
    kie.inject("credit", "html", times=None)

    def info_code() -> int:
        response = http.get(
            kie.base_url + RECORD_INFO, params={"taskId": "x"}, headers=AUTH, timeout=5
        )
        code: int = response.json()["code"]
        return code

    assert [info_code(), info_code(), info_code(), info_code()] == [500, 500, 455, 404]
    for _ in range(3):
        assert http.get(kie.base_url + CREDIT, headers=AUTH, timeout=5).status_code == 502
    assert _generate(http, kie, "music").status_code == 200
    kie.clear_faults()
    assert _credits(http, kie) == 999.0
    assert kie.counts() == {"generate": 1, "record-info": 4, "credit": 4}


def test_inject_rejects_unknown_names(kie: KieStandin) -> None:
    with pytest.raises(ValueError):
        kie.inject("nowhere", "500")
    with pytest.raises(ValueError):
        kie.inject("generate", "explode")
    with pytest.raises(ValueError):
        kie.inject("generate", "500", times=0)
    with pytest.raises(ValueError):
        kie.set_callback_mode("shout")


# -- configuration -------------------------------------------------------------------------


def test_codes_in_body_only(http: requests.Session) -> None:
    config = StandinConfig(cover_seconds=COVER_S, codes_in_body_only=True, rate_limit=(1, 60.0))
    with KieStandin(config) as kie:
        unauthorised = _generate(http, kie, "music", headers={})
        assert unauthorised.status_code == 200 and unauthorised.json()["code"] == 401
        first_sent = time.monotonic()
        assert _generate(http, kie, "music").json()["code"] == 200
        limited = _generate(http, kie, "music-2")
        assert limited.status_code == 200 and limited.json()["code"] == 429
        low, high = _retry_after_range(60.0, first_sent)
        assert low <= int(limited.headers["Retry-After"]) <= high
        kie.inject("credit", "455")
        maintenance = http.get(kie.base_url + CREDIT, headers=AUTH, timeout=5)
        assert maintenance.status_code == 200 and maintenance.json()["code"] == 455


@pytest.mark.parametrize(
    ("header", "status", "body"),
    [
        ("", 404, {"code": 404, "msg": "task not found"}),
        ("code-in-body", 200, {"code": 404, "msg": "task not found"}),
        ("data-null", 404, {"code": 404, "msg": "task not found", "data": None}),
        ("Code-In-Body ,data-null", 200, {"code": 404, "msg": "task not found", "data": None}),
        ("code-in-body, code-in-status", 404, {"code": 404, "msg": "task not found"}),
    ],
)
def test_a_request_chooses_its_style(
    kie: KieStandin, http: requests.Session, header: str, status: int, body: dict[str, Any]
) -> None:
    response = http.get(kie.base_url + RECORD_INFO, params={"taskId": "nope"},
                        headers={**AUTH, "X-Standin-Style": header}, timeout=5)
    assert (response.status_code, response.json()) == (status, body)


def test_an_unknown_style_token_answers_422_naming_it(
    kie: KieStandin, http: requests.Session
) -> None:
    response = _generate(http, kie, "music", headers={**AUTH, "X-Standin-Style": "shouty"})
    assert response.status_code == 422
    assert "shouty" in response.json()["msg"] and "code-in-body" in response.json()["msg"]
    assert kie.paid() == {} and kie.counts()["generate"] == 0


def test_record_info_in_the_wild_shape(kie: KieStandin, http: requests.Session) -> None:
    cover_id = _generate(http, kie, "music").json()["data"]["taskId"]
    wild = {**AUTH, "X-Standin-Style": "null-fields, epoch-times"}
    pending = http.get(kie.base_url + RECORD_INFO, params={"taskId": cover_id}, headers=wild,
                       timeout=5).json()["data"]
    assert pending["response"] is None and pending["errorMessage"] is None
    assert pending["errorCode"] is None and pending["completeTime"] is None
    assert isinstance(pending["createTime"], int)
    _wait_finished(http, kie, cover_id)
    done = http.get(kie.base_url + RECORD_INFO, params={"taskId": cover_id}, headers=wild,
                    timeout=5).json()["data"]
    documented = _info(http, kie, cover_id)
    # The same moments, as epoch milliseconds and as ISO-8601 text
    assert done["createTime"] == _iso_ms(documented["createTime"])
    assert done["completeTime"] == _iso_ms(documented["completeTime"])
    assert done["completeTime"] - done["createTime"] == round(COVER_S * 1000)
    assert done["errorMessage"] is None and done["errorCode"] == 200


def test_fault_form_and_data_win_over_the_style(kie: KieStandin, http: requests.Session) -> None:
    kie.set_style(code_form="body", error_data="null")
    kie.inject("generate", "409", form="status", data={"taskId": "abc"})
    kie.inject("generate", "429", data="absent")
    kie.inject("generate", "402")
    answers = [_generate(http, kie, "music") for _ in range(3)]
    assert [(a.status_code, a.json()) for a in answers] == [
        (409, {"code": 409, "msg": "cover record already exists", "data": {"taskId": "abc"}}),
        (200, {"code": 429, "msg": answers[1].json()["msg"]}),
        (200, {"code": 402, "msg": "insufficient credits", "data": None}),
    ]
    with pytest.raises(ValueError):
        kie.inject("generate", "500", form="sideways")
    with pytest.raises(ValueError):
        kie.inject("generate", "500", data="nothing")
    with pytest.raises(ValueError):
        kie.set_style(code_form="loud")
    with pytest.raises(ValueError):
        kie.set_style(colour="red")
    assert kie.state()["style"]["code_form"] == "body"  # a refused change changes nothing
    kie.reset()
    assert kie.state()["style"] == {
        "code_form": "status", "error_data": "absent", "time_format": "iso",
        "unset_fields": "documented", "duplicate_code": 400,
    }


def test_a_duplicate_answers_the_configured_code(http: requests.Session) -> None:
    with KieStandin(StandinConfig(cover_seconds=COVER_S, duplicate_code=409)) as kie:
        cover_id = _generate(http, kie, "music").json()["data"]["taskId"]
        again = _generate(http, kie, "music")
        assert (again.status_code, again.json()) == (
            409, {"code": 409, "msg": "cover record already exists", "data": {"taskId": cover_id}}
        )
        kie.set_style(duplicate_code=400)
        assert _generate(http, kie, "music").json()["code"] == 400
        assert kie.paid() == {"music": 1}
    with pytest.raises(ValueError):
        KieStandin(StandinConfig(duplicate_code=418))


def test_a_failure_callback_in_the_null_fields_style_carries_null_images(
    http: requests.Session, receiver: FastApp
) -> None:
    with KieStandin(StandinConfig(cover_seconds=0.05, unset_fields="null")) as kie:
        cover_id = _generate(http, kie, "genfail408-z", receiver.url).json()["data"]["taskId"]
        assert _wait_until(lambda: len(receiver.received) == 1)
    body = receiver.received[0].json()
    assert body["code"] == 408 and body["data"] == {"taskId": cover_id, "images": None}


def test_every_fault_trigger_is_documented() -> None:
    # The package docstring and the README's stand-in section name every trigger
    doc = standin_package.__doc__ or ""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The Kie stand-in") :]
    for prefix in (MISSING_MUSIC_PREFIX, FAILING_MUSIC_PREFIX, CREATE_FAILING_MUSIC_PREFIX):
        assert f"``{prefix}…``" in doc and f"`{prefix}…`" in section
    for code in ENVELOPE_FAULTS:
        assert code in doc and code in section
    for kind in FAULT_KINDS - set(ENVELOPE_FAULTS) - set(BODY_FAULTS):
        assert f'``"{kind}"``' in doc and f'"{kind}"' in section
    for token in STYLE_TOKENS:
        assert f"`{token}`" in section
    for callback_code in CALLBACK_FAILURES:
        assert str(callback_code) in doc and str(callback_code) in section
    assert "X-Standin-Style" in doc and "X-Standin-Style" in section


def test_non_loopback_hosts_are_refused() -> None:
    for host in ("0.0.0.0", "192.0.2.1", "example.com"):
        with pytest.raises(ValueError):
            KieStandin(StandinConfig(host=host))


def test_reset_forgets_everything(kie: KieStandin, http: requests.Session) -> None:
    cover_id = _generate(http, kie, "music").json()["data"]["taskId"]
    kie.inject("credit", "500", times=None)
    kie.set_credits(3)
    kie.set_callback_mode("drop")
    kie.reset()
    assert kie.paid() == {} and kie.generate_times() == [] and kie.answers() == {}
    assert kie.counts() == {"generate": 0, "record-info": 0, "credit": 0}
    assert _credits(http, kie) == 1000.0
    missing = http.get(
        kie.base_url + RECORD_INFO, params={"taskId": cover_id}, headers=AUTH, timeout=5
    )
    assert missing.status_code == 404
    assert kie.state()["callback_mode"] == "send"


# -- admin over HTTP ------------------------------------------------------------------------


def test_admin_endpoints(kie: KieStandin, http: requests.Session, receiver: FastApp) -> None:
    admin = kie.base_url + "/_standin"

    def state() -> dict[str, Any]:
        response = http.get(admin + "/state", timeout=5)
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    first = state()
    assert {"paid", "counts", "answers", "callbacks_sent", "credits"} <= set(first)
    http.post(admin + "/callback-mode", json={"mode": "duplicate"}, timeout=5)

    fault = {"endpoint": "generate", "fault": "500", "times": None, "retry_after": "1"}
    assert http.post(admin + "/faults", json=fault, timeout=5).json() == {"ok": True}
    assert _generate(http, kie, "music").status_code == 500
    assert _generate(http, kie, "music").headers["Retry-After"] == "1"
    assert http.delete(admin + "/faults", timeout=5).status_code == 200
    assert _generate(http, kie, "music", receiver.url).status_code == 200

    assert http.post(admin + "/credits", json={"credits": 0}, timeout=5).status_code == 200
    assert _generate(http, kie, "music-2").status_code == 402

    http.post(admin + "/credits", json={"credits": 5}, timeout=5)
    http.post(admin + "/rate-limit", json={"count": 1, "per_seconds": 60}, timeout=5)
    assert _generate(http, kie, "music-2").status_code == 429
    http.post(admin + "/rate-limit", json={"count": None}, timeout=5)
    assert _generate(http, kie, "music-2", "https://api.example.com/cb").status_code == 200
    _generate(http, kie, "music-3", receiver.url)
    assert _wait_until(lambda: state()["callbacks_sent"] == 4)
    assert len(receiver.received) == 4

    current = state()
    assert current["paid"] == {"music": 1, "music-2": 1, "music-3": 1}
    assert current["counts"]["generate"] == 7
    assert current["answers"]["generate:500"] == 2
    assert current["credits"] == 3.0

    style = {"code_form": "body", "error_data": "null", "time_format": "epoch-ms"}
    assert http.post(admin + "/style", json=style, timeout=5).json() == {"ok": True}
    assert state()["style"] == {**style, "unset_fields": "documented", "duplicate_code": 400}
    unauthorised = _generate(http, kie, "music-4", headers={})
    assert unauthorised.status_code == 200 and unauthorised.json()["data"] is None
    fault = {"endpoint": "credit", "fault": "505", "form": "status", "data": "absent"}
    assert http.post(admin + "/faults", json=fault, timeout=5).json() == {"ok": True}
    maintenance = http.get(kie.base_url + CREDIT, headers=AUTH, timeout=5)
    assert maintenance.status_code == 505 and "data" not in maintenance.json()
    bad_style = http.post(admin + "/style", json={"time_format": "roman"}, timeout=5)
    assert bad_style.status_code == 400 and "time_format" in bad_style.json()["error"]
    assert http.post(admin + "/style", json=[1], timeout=5).status_code == 400

    bad = http.post(admin + "/faults", json={"endpoint": "generate", "fault": "?"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["ok"] is False
    assert http.post(admin + "/credits", json={"credits": "lots"}, timeout=5).status_code == 400
    assert http.post(admin + "/callback-mode", data=b"{", timeout=5).status_code == 400
    assert http.get(admin + "/nothing", timeout=5).status_code == 404

    assert http.post(admin + "/reset", timeout=5).status_code == 200
    after = state()
    assert after["paid"] == {} and after["callbacks_sent"] == 0 and after["credits"] == 1000.0
    assert after["style"]["code_form"] == "status"


# -- command line -------------------------------------------------------------------------


@pytest.mark.e2e
def test_cli_serves_until_sigterm(http: requests.Session, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kie_covers.standin",
            "--key",
            "k1",
            "--key",
            "k2",
            "--rate-limit",
            "none",
            "--credits",
            "7",
            "--cover-seconds",
            "0.1",
            "--codes-in-body-only",
            "--error-data",
            "null",
            "--time-format",
            "epoch-ms",
            "--unset-fields",
            "null",
            "--duplicate-code",
            "409",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        for key in ("k1", "k2"):
            answer = http.get(
                base_url + CREDIT, headers={"Authorization": f"Bearer {key}"}, timeout=5
            )
            assert answer.json() == {"code": 200, "msg": "success", "data": 7.0}
        state = http.get(base_url + "/_standin/state", timeout=5).json()
        assert state["style"] == {
            "code_form": "body", "error_data": "null", "time_format": "epoch-ms",
            "unset_fields": "null", "duplicate_code": 409,
        }
        refused = http.get(base_url + CREDIT, timeout=5)
        assert (refused.status_code, refused.json()["data"]) == (200, None)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
