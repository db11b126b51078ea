"""Problem details (RFC 9457) for the producer API's error answers.

    from kie_covers.core.problems import field_errors, problem

    problem(422, "validation", "invalid cover request", errors=field_errors(bad.fields))
    # {"type": "urn:kie-covers:problem:validation", "title": "Invalid input",
    #  "status": 422, "detail": "invalid cover request",
    #  "errors": [{"field": "taskId", "rule": "required", "message": "..."}]}

Pure: builds JSON-ready dicts; the web layer sends them as
``application/problem+json``. Each problem kind has a stable ``type`` URI (a URN:
it names the kind, it is not meant to be fetched) and a fixed ``title``; ``detail``
says what happened this time. Validation problems carry an ``errors`` member: one
entry per field and broken rule, each with a machine-readable ``rule`` (see
`RULES`) and marshmallow's human message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The media type of every error answer of the producer API.
PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Prefix of every problem ``type`` (followed by the kind, e.g. ``validation``).
TYPE_PREFIX = "urn:kie-covers:problem:"

#: Problem kind -> its title (the same for every occurrence, as RFC 9457 asks).
TITLES: dict[str, str] = {
    "bad-request": "Malformed request",
    "validation": "Invalid input",
    "unauthorized": "Missing or wrong bearer token",
    "forbidden": "Not allowed from this address",
    "not-found": "No such resource",
    "method-not-allowed": "Method not allowed",
    "conflict": "Conflicts with the job's state",
    "too-large": "Request body too large",
    "unavailable": "Temporarily unavailable",
    "store-full": "Redis is full (maxmemory reached)",
}

#: (rule, fragment of the message) in the order tried: the first fragment found in a
#: message (ignoring case) names its rule. Marshmallow's default messages and our
#: schemas' own.
RULES: tuple[tuple[str, str], ...] = (
    ("required", "Missing data for required field"),
    ("unknown_field", "Unknown field"),
    ("not_null", "Field may not be null"),
    ("max_length", "Longer than maximum length"),
    ("min_length", "Shorter than minimum length"),
    ("length", "Length must be"),
    ("pattern", "must hold only"),
    ("no_control_characters", "control characters"),
    ("ascii", "must be ASCII"),
    ("url", "Not a valid URL"),
    ("one_of", "Must be one of"),
    ("type", "Not a valid"),
    ("type", "must be an object"),
    ("type", "must be a"),
    ("duplicate", "duplicate of"),
    ("max_items", "more than"),
)


@dataclass(frozen=True)
class FieldError:
    """One broken rule of one field.

    Attributes:
        field: the field's name as the client spelled it (``taskId``); ``""`` for the
            body as a whole.
        rule: machine-readable name of the rule (`RULES`; ``invalid`` otherwise).
        message: the human-readable message.
        index: the item's position in a batch (0-based), None outside batches.
    """

    field: str
    rule: str
    message: str
    index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``index`` only when set."""
        out: dict[str, Any] = {"field": self.field, "rule": self.rule,
                               "message": self.message}
        if self.index is not None:
            out["index"] = self.index
        return out


def rule_of(message: str) -> str:
    """The rule a validation `message` reports (`RULES`), or ``invalid``."""
    lowered = message.lower()
    for rule, fragment in RULES:
        if fragment.lower() in lowered:
            return rule
    return "invalid"


def field_errors(fields: Mapping[str, Sequence[str]], index: int | None = None
                 ) -> list[FieldError]:
    """One `FieldError` per message of `fields` (field -> messages, as
    `InvalidPayload.fields` gives them); ``_schema`` (the body as a whole) becomes
    field ``""``. Sorted by field name, then as given."""
    return [FieldError("" if name == "_schema" else name, rule_of(message), message, index)
            for name, messages in sorted(fields.items()) for message in messages]


def problem(status: int, kind: str, detail: str,
            errors: Sequence[FieldError] | None = None, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem document.

    Args:
        status: the HTTP status code.
        kind: a key of `TITLES` (its ``type`` is `TYPE_PREFIX` + kind).
        detail: what went wrong this time (never a secret).
        errors: per-field errors; the ``errors`` member is present when given.
        extra: further members (extension members, e.g. ``jobId``).
    """
    out: dict[str, Any] = {"type": TYPE_PREFIX + kind, "title": TITLES[kind],
                           "status": status, "detail": detail}
    if errors is not None:
        out["errors"] = [error.to_dict() for error in errors]
    out.update(extra)
    return out
