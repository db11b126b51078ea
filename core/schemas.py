"""Marshmallow schemas for every way data comes in.

- `CoverRequestSchema`: the producer API and raw Celery messages (``taskId``,
  ``callBackUrl``, spelled as Kie spells them).
- `EnvelopeSchema` and the ``*DataSchema`` classes: Kie's answers. A malformed
  answer is an upstream fault (`UpstreamError`), never a crash.
- `CallbackSchema`: the body Kie POSTs to our callback endpoint.

`validate_with(schema, data, what)` is the one way to use them (and
`validate_cover_request(data)` for a cover request): it returns clean data or
raises `InvalidPayload` whose ``fields`` name each field and the rule it broke.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

from kie_covers.core.errors import InvalidPayload

#: Longest music or cover task id we accept, in characters (Kie's are 32).
MAX_TASK_ID_CHARS = 128
#: Longest callback URL we accept, in characters.
MAX_URL_CHARS = 2048
#: Characters a task id may hold: letters, digits and ``- _ . :``.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"

_task_id_rules = [
    validate.Length(min=1, max=MAX_TASK_ID_CHARS),
    validate.Regexp(
        TASK_ID_PATTERN,
        error="must hold only letters, digits and - _ . : and start with a letter or digit",
    ),
]


class TaskIdField(fields.String):
    """A Kie task id: non-empty, at most `MAX_TASK_ID_CHARS`, safe characters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=_task_id_rules, **kwargs)


class HttpUrlField(fields.Url):
    """An absolute http(s) URL of at most `MAX_URL_CHARS` characters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            schemes={"http", "https"},
            require_tld=False,
            validate=validate.Length(max=MAX_URL_CHARS),
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        # The URL validator's regex is slow on huge input; refuse by length first.
        if isinstance(value, str) and len(value) > MAX_URL_CHARS:
            raise ValidationError(f"Longer than maximum length {MAX_URL_CHARS}.")
        return super()._deserialize(value, attr, data, **kwargs)


class CoverRequestSchema(Schema):
    """A cover job's input: exactly ``taskId`` and ``callBackUrl``."""

    class Meta:
        unknown = RAISE

    taskId = TaskIdField(required=True)
    callBackUrl = HttpUrlField(required=True)


class EnvelopeSchema(Schema):
    """Every Kie answer: ``{"code": int, "msg": str, "data": any}``."""

    class Meta:
        unknown = EXCLUDE

    code = fields.Integer(required=True, strict=True)
    msg = fields.String(load_default="", allow_none=True)
    data = fields.Raw(load_default=None, allow_none=True)


class GenerateDataSchema(Schema):
    """``data`` of a generate answer (and of a 400/409 naming the existing cover)."""

    class Meta:
        unknown = EXCLUDE

    taskId = TaskIdField(required=True)


class CoverResponseSchema(Schema):
    """``data.response`` of record-info."""

    class Meta:
        unknown = EXCLUDE

    images = fields.List(HttpUrlField(), load_default=None, allow_none=True)


class RecordInfoDataSchema(Schema):
    """``data`` of record-info: the cover's progress and, on success, its images."""

    class Meta:
        unknown = EXCLUDE

    taskId = TaskIdField(required=True)
    parentTaskId = fields.String(load_default=None, allow_none=True)
    successFlag = fields.Integer(
        required=True, validate=validate.OneOf([0, 1, 2, 3])
    )
    response = fields.Nested(CoverResponseSchema, load_default=None, allow_none=True)
    errorCode = fields.Integer(load_default=None, allow_none=True)
    errorMessage = fields.String(load_default=None, allow_none=True)



class CallbackDataSchema(Schema):
    """``data`` of a cover callback."""

    class Meta:
        unknown = EXCLUDE

    taskId = TaskIdField(required=True)
    images = fields.List(HttpUrlField(), load_default=None, allow_none=True)


class CallbackSchema(Schema):
    """The JSON Kie POSTs when a cover ends."""

    class Meta:
        unknown = EXCLUDE

    code = fields.Integer(required=True, strict=True)
    msg = fields.String(load_default="", allow_none=True)
    data = fields.Nested(CallbackDataSchema, required=True)


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested messages into ``{"data.taskId": [...]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                out.update(_flatten(value, name))
            else:
                out[name] = [str(m) for m in (value if isinstance(value, list) else [value])]
    else:
        out[prefix or "_schema"] = [str(m) for m in messages]
    return out


def validate_with(schema: Schema, data: Any, what: str) -> dict[str, Any]:
    """Load `data` with `schema`, or raise `InvalidPayload` naming each bad field.

    Args:
        schema: the schema instance to load with.
        data: the untrusted input (any type).
        what: a few words for the message, e.g. ``"cover request"``.
    """
    if not isinstance(data, Mapping):
        raise InvalidPayload(
            f"invalid {what}: expected a JSON object, got {type(data).__name__}",
            detail={"fields": {"_schema": ["must be an object"]}},
        )
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ValidationError as err:
        fields_ = _flatten(err.messages)
        summary = "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in sorted(fields_.items()))
        raise InvalidPayload(f"invalid {what}: {summary}", detail={"fields": fields_}) from None
    return loaded


_cover_request = CoverRequestSchema()


def validate_cover_request(data: Any) -> dict[str, str]:
    """Check a cover job's input; returns ``{"taskId": ..., "callBackUrl": ...}``."""
    return validate_with(_cover_request, data, "cover request")
