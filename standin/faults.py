"""Injected faults: the rules, the queue they wait in, and what each one answers.

The faults are those seen in the wild: every documented error code and a
few undocumented ones (with or without ``Retry-After``, the code in the HTTP
status or only in the body, with or without ``data``), proxies answering
HTML or nothing, truncated JSON, dropped connections and slow answers.

Documented codes (generate and record-info, Kie's docs): 400, 401, 402,
404, 409, 422, 429, 455, 500. Seen in the wild beyond them: 433, 451, 501,
505. Each answers under its own name (``"429"``) or as ``"body-<code>"``
(HTTP 200, the code only in the body). A rule may also choose the form
(``form``: ``"status"`` or ``"body"``) and the ``data`` (``"absent"``,
``"null"``, or a JSON object such as ``{"taskId": "..."}`` for a 400/409
that names an existing cover); unset, both follow the request's style.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .protocol import ENDPOINTS, NO_DATA, Answer, envelope
from .style import Style

#: Where a fault may be injected: one API endpoint, or ``"any"`` for all three.
FAULT_ENDPOINTS: frozenset[str] = frozenset(ENDPOINTS) | {"any"}

#: Faults answering a normal error envelope: fault -> (code, message), in
#: Kie's wording where known.
ENVELOPE_FAULTS: dict[str, tuple[int, str]] = {
    "429": (429, "Your call frequency is too high. Please try again later."),
    "455": (455, "The system is currently undergoing maintenance. Please try again later."),
    "402": (402, "insufficient credits"),
    "500": (500, "internal error"),
    "433": (433, "The daily usage limit of this API key has been exceeded"),
    "400": (400, "cover already generated for this task"),
    "401": (401, "You do not have access permissions"),
    "404": (404, "resource not found"),
    "409": (409, "cover record already exists"),
    "422": (422, "parameters failed validation"),
    "451": (451, "failed to fetch the input"),
    "501": (501, "generation failed"),
    "505": (505, "feature disabled"),
}
#: Faults answering HTTP 200 with the error code only in the body: ``"body-<code>"``.
BODY_FAULTS: dict[str, tuple[int, str]] = {
    f"body-{name}": answer for name, answer in ENVELOPE_FAULTS.items()
}
#: Values of a rule's ``form``: the code as HTTP status too, or only in the body.
FAULT_FORMS: frozenset[str] = frozenset({"status", "body"})
#: Named values of a rule's ``data`` (a JSON object is also accepted).
FAULT_DATA: frozenset[str] = frozenset({"absent", "null"})

_JSON = "application/json"
#: Faults with a fixed answer: fault -> (HTTP status, body, content type).
_FIXED_FAULTS: dict[str, tuple[int, bytes, str]] = {
    # JSON cut off mid-object.
    "malformed": (200, b'{"code": 200, "msg": ', _JSON),
    "html": (
        502,
        b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
        b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center>"
        b"</body></html>\n",
        "text/html; charset=utf-8",
    ),
    "empty": (200, b"", _JSON),
    "no-data": (200, json.dumps({"code": 200, "msg": "success", "data": None}).encode(), _JSON),
}

#: Every fault name :func:`new_fault` accepts.
FAULT_KINDS: frozenset[str] = (
    frozenset(ENVELOPE_FAULTS)
    | frozenset(BODY_FAULTS)
    | frozenset(_FIXED_FAULTS)
    | {"reset", "slow"}
)


@dataclass
class Fault:
    """One injected fault rule.

    Attributes:
        endpoint: an endpoint name or ``"any"`` (see ``FAULT_ENDPOINTS``).
        kind: the fault name (see ``FAULT_KINDS``).
        remaining: calls it still affects; ``None`` = until cleared.
        retry_after: ``Retry-After`` header value added to the answer, or None.
        delay_s: seconds to wait before answering.
        form: ``"status"``, ``"body"`` or None (the request's style; a
            ``"body-<code>"`` fault is always ``"body"``).
        data: ``"absent"``, ``"null"``, a dict sent as ``data``, or None
            (the request's style).
    """

    endpoint: str
    kind: str
    remaining: int | None
    retry_after: str | None
    delay_s: float
    form: str | None = None
    data: str | dict[str, Any] | None = None


def new_fault(
    endpoint: str,
    fault: str,
    times: int | None = 1,
    *,
    retry_after: str | None = None,
    delay_s: float = 0.0,
    form: str | None = None,
    data: str | dict[str, Any] | None = None,
) -> Fault:
    """A checked fault rule; the arguments are those of ``KieStandin.inject``.

    Raises:
        ValueError: on an unknown endpoint, fault, form or data, ``times`` <
            1 or a negative delay.
    """
    if form is not None and form not in FAULT_FORMS:
        raise ValueError(f"form must be one of {sorted(FAULT_FORMS)} or None, got {form!r}")
    if data is not None and not isinstance(data, dict) and data not in FAULT_DATA:
        raise ValueError(
            f"data must be one of {sorted(FAULT_DATA)}, a JSON object or None, got {data!r}"
        )
    if endpoint not in FAULT_ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; use one of {sorted(FAULT_ENDPOINTS)}")
    if fault not in FAULT_KINDS:
        raise ValueError(f"unknown fault {fault!r}; use one of {sorted(FAULT_KINDS)}")
    bad_times = isinstance(times, bool) or not isinstance(times, int) or times < 1
    if times is not None and bad_times:
        raise ValueError(f"times must be a positive int or None, got {times!r}")
    if not isinstance(delay_s, (int, float)) or isinstance(delay_s, bool) or delay_s < 0:
        raise ValueError(f"delay_s must be a non-negative number, got {delay_s!r}")
    if retry_after is not None and not isinstance(retry_after, str):
        raise ValueError(f"retry_after must be a string or None, got {retry_after!r}")
    return Fault(endpoint, fault, times, retry_after, float(delay_s), form, data)


class FaultQueue:
    """Fault rules in the order they were injected.

    Not thread-safe on its own: the stand-in's state lock guards it.
    """

    def __init__(self) -> None:
        """An empty queue."""
        self._rules: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Append ``fault``; earlier rules still match first."""
        self._rules.append(fault)

    def clear(self) -> None:
        """Forget every rule."""
        self._rules.clear()

    def take(self, endpoint: str) -> Fault | None:
        """The first rule matching a call to ``endpoint``, used up by one call; else None."""
        for i, fault in enumerate(self._rules):
            if fault.endpoint in (endpoint, "any"):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._rules[i]
                return fault
        return None

    def describe(self) -> list[dict[str, Any]]:
        """The pending rules as JSON-ready dicts: endpoint, fault, times (None = until cleared)."""
        return [
            {
                "endpoint": f.endpoint,
                "fault": f.kind,
                "times": f.remaining,
                "form": f.form,
                "data": f.data,
            }
            for f in self._rules
        ]


def serve_fault(fault: Fault, *, style: Style) -> Answer | None:
    """Wait ``fault.delay_s`` seconds, then the answer replacing the real one.

    Returns None for ``"slow"``: after its wait the call is answered
    normally. Call it without holding any lock, so other calls go on.
    """
    if fault.delay_s > 0:
        time.sleep(fault.delay_s)
    if fault.kind == "slow":
        return None
    return fault_answer(fault, style=style)


def _fault_data(fault: Fault) -> Any:
    """The ``data`` argument of ``envelope`` for an envelope fault."""
    if isinstance(fault.data, dict):
        return fault.data
    if fault.data == "null":
        return None
    return NO_DATA  # "absent", or None: the style decides


def fault_answer(fault: Fault, *, style: Style) -> Answer:
    """The answer a (non-"slow") fault gives instead of the real one, without waiting.

    ``style`` is the request's (see ``envelope``); the rule's own ``form``
    and ``data`` win over it.
    """
    extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    kind = fault.kind
    named = ENVELOPE_FAULTS.get(kind) or BODY_FAULTS.get(kind)
    if named is not None:
        code, msg = named
        form = "body" if kind in BODY_FAULTS else (fault.form or style.code_form)
        changes: dict[str, Any] = {"code_form": form}
        if isinstance(fault.data, str):
            changes["error_data"] = fault.data
        return envelope(
            code, msg, _fault_data(fault), headers=extra, style=style.with_changes(changes)
        )
    if kind == "reset":
        return Answer(0, reset=True, label=kind)
    fixed = _FIXED_FAULTS.get(kind)
    if fixed is None:
        raise AssertionError(f"unhandled fault {kind!r}")  # new_fault() validates kinds
    status, body, content_type = fixed
    return Answer(status, body, content_type, extra, label=kind)
