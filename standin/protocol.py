"""The wire as Kie's clients see it: API paths, endpoint names, answers and Kie's envelope."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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


def envelope(
    code: int,
    msg: str,
    data: Any = None,
    *,
    codes_in_body_only: bool,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Kie's ``{"code", "msg", "data"}`` answer, counted under ``code``.

    The code is the HTTP status too, unless it is 200 or
    ``codes_in_body_only`` (then HTTP 200, the code only in the body).
    ``headers`` are copied onto the answer; default none.
    """
    status = 200 if code == 200 or codes_in_body_only else code
    body = json.dumps({"code": code, "msg": msg, "data": data}).encode()
    return Answer(status, body, headers=dict(headers or {}), label=str(code))


def json_answer(status: int, payload: Any) -> Answer:
    """A plain JSON answer with HTTP ``status`` (control endpoints): no envelope."""
    return Answer(status, json.dumps(payload).encode(), label=str(status))
