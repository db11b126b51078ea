"""The client reads every shape real Kie answers are known to take, the same way.

Kie's documents give one shape; answers in the wild vary: ``null`` or ``""`` for
unset fields, epoch or ISO-8601 times, the code in the HTTP status or only in the
body, error envelopes with or without ``data``, 400 or 409 for a duplicate. Where
the stand-in can produce a variant, the real `KieClient` reads it over HTTP;
otherwise the client's parsing functions read it in process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from kie_covers.config import Secret
from kie_covers.core import errors
from kie_covers.core.answers import interpret, interpret_callback
from kie_covers.core.schemas import RecordInfoDataSchema, kie_time, validate_with
from kie_covers.runtime.kie_client import FAILED, PENDING, SUCCESS, KieClient
from kie_covers.standin import KieStandin, StandinConfig

KEY = "standin-key"
NOWHERE = "http://127.0.0.1:9/callback"
COVER_S = 0.1  # seconds from generate to a finished cover

#: Per-request styles of every record-info variant the stand-in can produce.
RECORD_STYLES = [
    "documented-fields, iso-times",
    "documented-fields, epoch-times",
    "null-fields, iso-times",
    "null-fields, epoch-times",
]
#: Every error code the stand-in can answer, documented or seen in the wild,
#: with the error class the client must raise for it.
ERROR_CLASSES: dict[str, type[errors.CoverError]] = {
    "400": errors.AlreadyGenerated,
    "401": errors.Unauthorized,
    "402": errors.OutOfCredits,
    "404": errors.NotFound,
    "409": errors.AlreadyGenerated,
    "422": errors.Rejected,
    "429": errors.RateLimited,
    "433": errors.DailyCapReached,
    "451": errors.UnknownAnswer,
    "455": errors.Maintenance,
    "500": errors.UpstreamError,
    "501": errors.UpstreamError,
    "505": errors.UpstreamError,
}


@pytest.fixture(scope="module")
def kie() -> Iterator[KieStandin]:
    with KieStandin(StandinConfig(cover_seconds=COVER_S, rate_limit=None)) as standin:
        yield standin


@pytest.fixture
def fresh(kie: KieStandin) -> KieStandin:
    kie.reset()
    return kie


def _client(kie: KieStandin, style: str = "") -> KieClient:
    """The product's client against the stand-in; ``style`` goes in X-Standin-Style."""
    session = requests.Session()
    session.trust_env = False  # loopback only
    if style:
        session.headers["X-Standin-Style"] = style
    return KieClient(kie.base_url, Secret(KEY), timeout_s=5.0, session=session)


def _finished(client: KieClient, cover_id: str) -> Any:
    deadline = time.monotonic() + 15
    while True:
        info = client.record_info(cover_id)
        if info.success_flag in (SUCCESS, FAILED):
            return info
        assert time.monotonic() < deadline, "the cover never finished"
        time.sleep(0.02)


# -- over HTTP, through the real stand-in ----------------------------------------------


@pytest.mark.parametrize("style", RECORD_STYLES)
def test_record_info_reads_the_same_in_every_shape(fresh: KieStandin, style: str) -> None:
    client = _client(fresh, style)
    before = time.time()
    ok = client.generate("music-ok", NOWHERE)
    failing = client.generate("genfail-x", NOWHERE)
    # Pending: no images, no error, whether fields are "" / {} / absent or null
    pending = client.record_info(ok.cover_task_id)
    assert pending.success_flag == PENDING and pending.images == []
    assert pending.error_code is None and pending.error_message is None
    assert pending.created_at is not None and before - 1 <= pending.created_at <= time.time()
    assert pending.completed_at is None
    # Success: the images, errorCode 200, and both times, ISO or epoch alike
    done = _finished(client, ok.cover_task_id)
    assert len(done.images) == 2 and done.error_code == 200 and done.error_message is None
    assert done.created_at == pytest.approx(pending.created_at, abs=0.001)
    assert done.completed_at == pytest.approx(done.created_at + COVER_S, abs=0.002)
    # Failure: errorCode 500 and the message
    failed = _finished(client, failing.cover_task_id)
    assert failed.images == [] and failed.error_code == 500
    assert failed.error_message == "Cover generation failed"


@pytest.mark.parametrize("data", ["absent", "null"])
@pytest.mark.parametrize("form", ["status", "body"])
@pytest.mark.parametrize("fault", sorted(ERROR_CLASSES))
def test_an_error_code_reads_the_same_in_both_forms_with_or_without_data(
    fresh: KieStandin, fault: str, form: str, data: str
) -> None:
    fresh.inject("generate", fault, form=form, data=data)
    with pytest.raises(errors.CoverError) as raised:
        _client(fresh).generate("music", NOWHERE)
    assert type(raised.value) is ERROR_CLASSES[fault]
    assert raised.value.code == int(fault) and raised.value.message


@pytest.mark.parametrize("style", ["duplicate-400", "duplicate-409"])
@pytest.mark.parametrize("form", ["code-in-status", "code-in-body"])
def test_a_duplicate_names_the_existing_cover_in_both_codes_and_forms(
    fresh: KieStandin, style: str, form: str
) -> None:
    first = _client(fresh).generate("music-dup", NOWHERE)
    again = _client(fresh, f"{style}, {form}").generate("music-dup", NOWHERE)
    assert again.existing and again.cover_task_id == first.cover_task_id
    assert fresh.paid() == {"music-dup": 1}
    assert fresh.answers()[f"generate:{style[-3:]}"] == 1


@pytest.mark.parametrize("form", ["status", "body"])
def test_a_conflict_without_a_task_id_is_already_generated(fresh: KieStandin, form: str) -> None:
    fresh.inject("generate", "409", form=form, data={"note": "no taskId here"})
    with pytest.raises(errors.AlreadyGenerated):
        _client(fresh).generate("music", NOWHERE)


# -- in process: variants the stand-in does not send ----------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2025-01-15T10:33:01.000Z", 1736937181.0),
        ("2025-01-15T10:33:01Z", 1736937181.0),
        ("2025-01-15T18:33:01+08:00", 1736937181.0),
        ("2025-01-15 10:33:01", 1736937181.0),
        (1736937181000, 1736937181.0),
        (1736937181, 1736937181.0),
        ("1736937181000", 1736937181.0),
        (1736937181.5, 1736937181.5),
        (None, None),
        ("", None),
        ("soon", None),
        (True, None),
        (-5, None),
    ],
)
def test_kie_times_read_as_epoch_seconds(value: Any, seconds: float | None) -> None:
    assert kie_time(value) == seconds


@pytest.mark.parametrize(
    "unset",
    [
        {"response": None, "errorCode": None, "errorMessage": None},
        {"response": "", "errorCode": "", "errorMessage": ""},
        {"response": {}, "errorMessage": ""},
        {"response": {"images": None}, "errorCode": None},
        {"response": {"images": []}},
    ],
)
def test_unset_record_info_fields_read_as_none_whatever_kie_sends(unset: dict[str, Any]) -> None:
    data = {"taskId": "c1", "successFlag": 2, "createTime": "2025-01-15T10:33:01.000Z", **unset}
    loaded = validate_with(RecordInfoDataSchema(), data, "record-info answer")
    assert not (loaded["response"] or {}).get("images")
    assert loaded["errorCode"] is None and not loaded["errorMessage"]
    assert loaded["successFlag"] == 2 and loaded["createTime"] == 1736937181.0


def test_a_malformed_error_code_is_still_refused() -> None:
    with pytest.raises(errors.InvalidPayload) as raised:
        validate_with(RecordInfoDataSchema(), {"taskId": "c1", "successFlag": 3,
                                               "errorCode": "boom"}, "record-info answer")
    assert "errorCode" in raised.value.message


@pytest.mark.parametrize("images", [{}, {"images": None}])
@pytest.mark.parametrize("code", [400, 408, 500, 501, 531])
def test_a_failure_callback_reads_the_same_with_or_without_images(
    code: int, images: dict[str, Any]
) -> None:
    outcome = interpret_callback(
        {"code": code, "msg": "failed", "data": {"taskId": "c1", **images}}
    )
    assert outcome.cover_task_id == "c1" and outcome.images is None
    assert outcome.error is not None and outcome.error.code == code


@pytest.mark.parametrize("msg", ["success", "", None])
@pytest.mark.parametrize("status", [200, 429])
def test_an_answer_reads_the_same_whatever_the_message_and_status(
    msg: str | None, status: int
) -> None:
    body = json.dumps({"code": 429, "msg": msg}).encode()
    with pytest.raises(errors.RateLimited) as raised:
        interpret(status, {}, body)
    assert raised.value.code == 429 and raised.value.message
    assert interpret(200, {}, json.dumps({"code": 200, "msg": msg, "data": 5}).encode()) == 5
