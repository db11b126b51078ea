"""The wire as Kie's clients see it: API paths, endpoint names, answers and Kie's envelope."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .style import Style

#: Request paths of Kie's three calls: generate a cover (POST), read a cover
#: task's details (GET ``?taskId=``), read the account's credits (GET).
GENERATE_PATH = "/api/v1/suno/cover/generate"
RECORD_INFO_PATH = "/api/v1/suno/cover/record-info"
CREDIT_PATH = "/api/v1/chat/credit"

#: API endpoints by request path; the names are used by faults and counters.
ENDPOINT_PATHS: dict[str, str] = {
    GENERATE_PATH: "generate",
    RECORD_INFO_PATH: "record-info",
    CREDIT_PATH: "credit",
}
#: The API endpoint names, in the order counters list them.
ENDPOINTS: tuple[str, ...] = ("generate", "record-info", "credit")

#: The OpenAPI 3.1 document of the three calls and the callback, written from
#: Kie's docs: the contract the stand-in's answers are tested against.
OPENAPI_PATH = Path(__file__).parent / "openapi" / "kie-cover.yaml"

#: Largest request body read, bytes (1 MiB); larger ones answer 413.
MAX_BODY_BYTES = 1 << 20


@dataclass
class Answer:
    """What to send back for one request.

    Attributes:
        status: HTTP status code (unused when ``reset``).
        body: the body bytes; default empty.
        content_type: the ``Content-Type`` header; default JSON.
        headers: extra headers such as ``Retry-After``; default none.
        label: how the answer is counted in ``KieStandin.answers()`` (the
            part after ``"<endpoint>:"``): the body code, or the fault name.
        reset: when True, drop the connection instead of answering.
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    label: str = ""
    reset: bool = False


class _NoData:
    """Marks an envelope with no ``data`` given (see :func:`envelope`)."""

    def __repr__(self) -> str:
        return "NO_DATA"


#: ``envelope(data=NO_DATA)``: no ``data`` given; the style decides
#: whether an error envelope leaves it out or carries ``null``.
NO_DATA: Any = _NoData()


def envelope(
    code: int,
    msg: str,
    data: Any = NO_DATA,
    *,
    style: Style,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Kie's ``{"code", "msg", "data"}`` answer, counted under ``code``.

    The code is the HTTP status too, unless it is 200 or ``style.code_form``
    is ``"body"`` (then HTTP 200, the code only in the body). With no
    ``data`` given, the body leaves ``data`` out, or carries ``"data": null``
    when ``style.error_data`` is ``"null"`` (a 200 always carries it).
    ``headers`` are copied onto the answer; default none.
    """
    status = 200 if code == 200 or style.code_in_body else code
    payload: dict[str, Any] = {"code": code, "msg": msg}
    if data is not NO_DATA:
        payload["data"] = data
    elif code == 200 or style.error_data == "null":
        payload["data"] = None
    return Answer(status, json.dumps(payload).encode(), headers=dict(headers or {}),
                  label=str(code))


def json_answer(status: int, payload: Any) -> Answer:
    """A plain JSON answer with HTTP ``status`` (control endpoints): no envelope."""
    return Answer(status, json.dumps(payload).encode(), label=str(status))
