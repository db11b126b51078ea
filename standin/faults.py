"""Injected faults: the rules, the queue they wait in, and what each one answers.

The faults are those seen in the wild: rate limits and maintenance (with or
without ``Retry-After``), proxies answering HTML or nothing, truncated JSON,
dropped connections and slow answers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .protocol import ENDPOINTS, Answer, envelope

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
    "505": (505, "feature disabled"),
}
#: Faults answering HTTP 200 with the error code only in the body.
BODY_FAULTS: dict[str, tuple[int, str]] = {
    "body-429": ENVELOPE_FAULTS["429"],
    "body-455": ENVELOPE_FAULTS["455"],
    "body-500": ENVELOPE_FAULTS["500"],
}

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
    """

    endpoint: str
    kind: str
    remaining: int | None
    retry_after: str | None
    delay_s: float


def new_fault(
    endpoint: str,
    fault: str,
    times: int | None = 1,
    *,
    retry_after: str | None = None,
    delay_s: float = 0.0,
) -> Fault:
    """A checked fault rule; the arguments are those of ``KieStandin.inject``.

    Raises:
        ValueError: on an unknown endpoint or fault, ``times`` < 1 or a
            negative delay.
    """
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
    return Fault(endpoint, fault, times, retry_after, float(delay_s))


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
            {"endpoint": f.endpoint, "fault": f.kind, "times": f.remaining} for f in self._rules
        ]


def serve_fault(fault: Fault, *, codes_in_body_only: bool) -> Answer | None:
    """Wait ``fault.delay_s`` seconds, then the answer replacing the real one.

    Returns None for ``"slow"``: after its wait the call is answered
    normally. Call it without holding any lock, so other calls go on.
    """
    if fault.delay_s > 0:
        time.sleep(fault.delay_s)
    if fault.kind == "slow":
        return None
    return fault_answer(fault, codes_in_body_only=codes_in_body_only)


def fault_answer(fault: Fault, *, codes_in_body_only: bool) -> Answer:
    """The answer a (non-"slow") fault gives instead of the real one, without waiting.

    ``codes_in_body_only`` is the configuration's (see ``envelope``).
    """
    extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    kind = fault.kind
    if kind in ENVELOPE_FAULTS:
        code, msg = ENVELOPE_FAULTS[kind]
        return envelope(code, msg, headers=extra, codes_in_body_only=codes_in_body_only)
    if kind in BODY_FAULTS:
        code, msg = BODY_FAULTS[kind]
        body = json.dumps({"code": code, "msg": msg, "data": None}).encode()
        return Answer(200, body, headers=extra, label=str(code))
    if kind == "reset":
        return Answer(0, reset=True, label=kind)
    fixed = _FIXED_FAULTS.get(kind)
    if fixed is None:
        raise AssertionError(f"unhandled fault {kind!r}")  # new_fault() validates kinds
    status, body, content_type = fixed
    return Answer(status, body, content_type, extra, label=kind)
