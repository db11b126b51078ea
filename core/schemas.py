"""Marshmallow schemas for every way data comes in.

- `CoverRequestSchema`: the producer API and raw Celery messages (``taskId``,
  ``callBackUrl``, spelled as Kie spells them; optional ``priority`` and ``tenant``).
- `EnvelopeSchema` and the ``*DataSchema`` classes: Kie's answers. A malformed
  answer is an upstream fault (`UpstreamError`), never a crash.
- `CallbackSchema`: the body Kie POSTs to our callback endpoint.

`validate_with(schema, data, what)` is the one way to use them (and
`validate_cover_request(data)` for a cover request): it returns clean data or
raises `InvalidPayload` whose ``fields`` name each field and the rule it broke.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

from kie_covers.core.errors import InvalidPayload

#: Longest music or cover task id we accept, in characters (Kie's are 32).
MAX_TASK_ID_CHARS = 128
#: Longest callback URL we accept, in characters.
MAX_URL_CHARS = 2048
#: Characters a task id may hold: letters, digits and ``- _ . :``. Matched against
#: the whole value: ``\Z``, not ``$``, which would also match before a trailing
#: newline and let ``"x\n"`` pass as a second id for music task ``"x"``.
TASK_ID_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9_.:-]*\Z"
#: Longest job id (a Celery task id) a worker accepts, in characters. Ours are UUIDs
#: (36); a producer in another language may pick its own ids, within this.
MAX_JOB_ID_CHARS = 128
#: A job id: 1 to `MAX_JOB_ID_CHARS` printable ASCII characters, no spaces (so it is
#: safe in Redis keys, log lines and the image store's object names).
JOB_ID_PATTERN = re.compile(rf"[!-~]{{1,{MAX_JOB_ID_CHARS}}}")

#: The priority lanes of the rate limit: `INTERACTIVE` goes first, `BULK` gets at
#: least COVERS_BULK_MIN_SHARE of the slots while interactive jobs wait.
INTERACTIVE = "interactive"
BULK = "bulk"
PRIORITIES = (INTERACTIVE, BULK)
#: Longest tenant id we accept, in characters.
MAX_TENANT_CHARS = 64
#: A tenant id (the app's user or organisation): letters, digits and ``. _ : @ -``,
#: starting with a letter or digit; matched whole (``\Z``, as `TASK_ID_PATTERN`).
TENANT_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._:@-]*\Z"

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


def _control_character(value: str) -> str | None:
    """Why `value` is refused for holding a control character, or None if it holds none.

    Control characters (C0 including NUL, tab, CR and LF; DEL; C1) have no place in a
    URL: a CR or LF could split an HTTP request line or header, a NUL cuts C strings.
    """
    for index, char in enumerate(value):
        if unicodedata.category(char) == "Cc":
            return (f"must not contain control characters (found U+{ord(char):04X} "
                    f"at position {index + 1}); percent-encode it if it is data")
    return None


class HttpUrlField(fields.Url):
    """An absolute http(s) URL of at most `MAX_URL_CHARS` characters, without control
    characters (NUL, tab, CR, LF, ...)."""

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
        if isinstance(value, str) and (problem := _control_character(value)):
            raise ValidationError(problem)
        return super()._deserialize(value, attr, data, **kwargs)


def _ascii_form(host: str) -> str | None:
    """The IDNA (punycode) form of a non-ASCII host name, or None if it has none.

    Only a form that decodes back to the same name counts: IDNA 2003's mapping turns
    look-alikes into other names (``⒈.com`` into ``1..com``), which is no hint to give.
    """
    try:
        ascii_host = host.encode("idna").decode("ascii")
        same = ascii_host.encode("ascii").decode("idna") == host.lower()
    except (UnicodeError, ValueError):
        return None
    return ascii_host if same else None


def _non_ascii(value: str) -> str | None:
    """Why `value` is refused for holding non-ASCII characters, or None if it is ASCII.

    An internationalised host name gets a message naming its punycode form.
    """
    if value.isascii():
        return None
    index = next(i for i, char in enumerate(value) if not char.isascii())
    found = f"found {value[index]!r} (U+{ord(value[index]):04X}) at position {index + 1}"
    host = _host_as_written(value)
    if host is not None and not host.isascii():
        ascii_host = _ascii_form(host)
        hint = (f"write the host in its ASCII (punycode) form, {ascii_host!r}"
                if ascii_host else "the host is not a valid internationalised name")
        return f"must be ASCII: {found}; {hint}"
    return f"must be ASCII: {found}; percent-encode non-ASCII characters (UTF-8)"


def _host_as_written(value: str) -> str | None:
    """The host part of URL `value` as written (case kept), or None if none is found."""
    _scheme, sep, rest = value.partition("://")
    if not sep:
        return None
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


class CallbackUrlField(HttpUrlField):
    """The app's callback URL: an `HttpUrlField` that is also pure ASCII.

    Non-ASCII is refused, not converted, with a message per case: an
    internationalised host (``http://bücher.example/cb``) is refused with its
    punycode form in the message (``xn--bcher-kva.example``) to use instead; any other
    non-ASCII character is refused with a hint to percent-encode it. Refused rather
    than converted so the URL kept, shown by `get_cover` and called is exactly the one
    the app gave (and the same URL compares equal on every enqueue), and no look-alike
    Unicode host is silently turned into a different ASCII one.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and len(value) <= MAX_URL_CHARS:
            problem = _control_character(value) or _non_ascii(value)
            if problem:
                raise ValidationError(problem)
        return super()._deserialize(value, attr, data, **kwargs)


class TenantField(fields.String):
    """A tenant id: 1 to `MAX_TENANT_CHARS` characters of `TENANT_PATTERN`; None (or
    absent) is the default tenant."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=[
            validate.Length(min=1, max=MAX_TENANT_CHARS),
            validate.Regexp(TENANT_PATTERN, error=(
                "must hold only letters, digits and . _ : @ - and start with a letter "
                "or digit")),
        ], **kwargs)


class PriorityField(fields.String):
    """A priority lane: ``interactive`` or ``bulk`` (`PRIORITIES`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=validate.OneOf(
            PRIORITIES, error="must be one of: interactive, bulk"), **kwargs)


class LaneSchema(Schema):
    """Where a job waits its turn under the rate limit: ``priority`` (default
    ``interactive``) and ``tenant`` (default None: the default tenant)."""

    class Meta:
        unknown = RAISE

    priority = PriorityField(load_default=INTERACTIVE)
    tenant = TenantField(load_default=None, allow_none=True)


class CoverRequestSchema(LaneSchema):
    """A cover job's input: ``taskId`` (`TaskIdField`) and ``callBackUrl``
    (`CallbackUrlField`), and optionally ``priority`` and ``tenant`` (`LaneSchema`)."""

    taskId = TaskIdField(required=True)
    callBackUrl = CallbackUrlField(required=True)


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


def _blank(value: Any) -> bool:
    """True for the ways Kie says "not set": null, or an empty or blank string."""
    return value is None or (isinstance(value, str) and not value.strip())


class BlankableInteger(fields.Integer):
    """An integer that Kie may also send as ``null`` or ``""`` (both load as None)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(load_default=None, allow_none=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return None if _blank(value) else super()._deserialize(value, attr, data, **kwargs)


class BlankableNested(fields.Nested):
    """A nested object that Kie may also send as ``null`` or ``""`` (both load as None)."""

    def __init__(self, nested: Any, **kwargs: Any) -> None:
        super().__init__(nested, load_default=None, allow_none=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None,
                     partial: bool | Sequence[str] | AbstractSet[str] | None = None,
                     **kwargs: Any) -> Any:
        if _blank(value):
            return None
        return super()._deserialize(value, attr, data, partial, **kwargs)


#: Epoch numbers above this are milliseconds, below it seconds (1e11 s is year 5138).
_EPOCH_MS_ABOVE = 1e11


def kie_time(value: Any) -> float | None:
    """Seconds since the epoch from a Kie time field, or None when unset or unreadable.

    Kie's docs and examples write ISO-8601 UTC (``"2025-01-15T10:33:01.000Z"``);
    answers in the wild also carry epoch milliseconds or seconds (numbers or digit
    strings) and ``"2025-01-01 00:00:00"`` (taken as UTC). ``null`` and ``""`` mean
    not set. The times are informational, so an unreadable one is None, never a
    failed job.
    """
    if isinstance(value, bool) or _blank(value):
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d*)?\s*", value):
        value = float(value)
    if isinstance(value, int | float):
        seconds = float(value) / 1000 if value > _EPOCH_MS_ABOVE else float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class KieTimeField(fields.Field[float | None]):
    """A Kie time field, loaded as seconds since the epoch or None (see `kie_time`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(load_default=None, allow_none=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return kie_time(value)


class CoverResponseSchema(Schema):
    """``data.response`` of record-info."""

    class Meta:
        unknown = EXCLUDE

    images = fields.List(HttpUrlField(), load_default=None, allow_none=True)


class RecordInfoDataSchema(Schema):
    """``data`` of record-info: the cover's progress and, on success, its images.

    Accepts both shapes Kie is known to send: the documented one (``errorMessage``
    ``""``, ``response`` an object, ISO-8601 times) and the one seen in the wild
    (``null`` for unset fields, ``""`` for an unset ``errorCode`` or ``response``,
    epoch times). Unset fields load as None; times as epoch seconds.
    """

    class Meta:
        unknown = EXCLUDE

    taskId = TaskIdField(required=True)
    parentTaskId = fields.String(load_default=None, allow_none=True)
    successFlag = fields.Integer(
        required=True, validate=validate.OneOf([0, 1, 2, 3])
    )
    response = BlankableNested(CoverResponseSchema)
    errorCode = BlankableInteger()
    errorMessage = fields.String(load_default=None, allow_none=True)
    createTime = KieTimeField()
    completeTime = KieTimeField()



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
_lane = LaneSchema()


def validate_cover_request(data: Any) -> dict[str, Any]:
    """Check a cover job's input; returns ``{"taskId": ..., "callBackUrl": ...,
    "priority": ..., "tenant": ...}`` (priority ``interactive`` and tenant None when
    not given)."""
    return validate_with(_cover_request, data, "cover request")


def validate_lane(priority: Any, tenant: Any) -> tuple[str, str | None]:
    """Check a priority and a tenant (`LaneSchema`); returns them clean.

    Raises:
        InvalidPayload: naming ``priority`` and/or ``tenant`` and the rule broken.
    """
    clean = validate_with(_lane, {"priority": priority, "tenant": tenant}, "cover request")
    return str(clean["priority"]), clean["tenant"]


def job_id_problem(job_id: object) -> str | None:
    """Why `job_id` (a Celery task id from a message) is refused, or None if it is fine.

    A job id is 1 to `MAX_JOB_ID_CHARS` (128) printable ASCII characters without
    spaces (`JOB_ID_PATTERN`, matched whole: ``"x\n"`` is refused). The message never
    quotes the id itself, which may be huge.
    """
    if not isinstance(job_id, str):
        return f"must be a string, got {type(job_id).__name__}"
    if not job_id:
        return "must not be empty"
    if len(job_id) > MAX_JOB_ID_CHARS:
        return f"{len(job_id)} characters, longer than maximum length {MAX_JOB_ID_CHARS}"
    if JOB_ID_PATTERN.fullmatch(job_id) is None:
        bad = next(c for c in job_id if not "!" <= c <= "~")
        return (f"must hold only printable ASCII characters without spaces "
                f"(found U+{ord(bad):04X})")
    return None
