"""Turn a Kie answer into a result or a typed error: the one place that does.

Tasks never look at status codes. `interpret` takes an HTTP answer (status,
headers, raw body) and returns the envelope's ``data`` or raises a
`kie_covers.core.errors.CoverError`. `interpret_callback` does the same for the bodies
Kie POSTs to our callback endpoint. The code tables are data, and
``KIE_CODE_TABLE`` picks one (other providers serve the same API with other
codes).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kie_covers.core import errors
from kie_covers.core.masking import PATTERNS_ONLY
from kie_covers.core.schemas import CallbackSchema, EnvelopeSchema, validate_with

#: Answer code -> error class, per provider. 200 is success everywhere;
#: a code not in the table becomes `UnknownAnswer` (or `UpstreamError` if >= 500).
CODE_TABLES: dict[str, dict[int, type[errors.CoverError]]] = {
    "kie": {
        400: errors.AlreadyGenerated,
        401: errors.Unauthorized,
        402: errors.OutOfCredits,
        404: errors.NotFound,
        408: errors.UpstreamError,
        409: errors.AlreadyGenerated,
        422: errors.Rejected,
        429: errors.RateLimited,
        433: errors.DailyCapReached,
        455: errors.Maintenance,
    },
    "sunoapi": {
        400: errors.AlreadyGenerated,
        401: errors.Unauthorized,
        404: errors.NotFound,
        409: errors.AlreadyGenerated,
        422: errors.Rejected,
        429: errors.OutOfCredits,
        430: errors.RateLimited,
        455: errors.Maintenance,
    },
}

#: Callback codes (Kie's "Cover Generation Callbacks" page) -> error class.
#: 531 means Kie refunded the credits and asks us to try again.
CALLBACK_CODES: dict[int, type[errors.CoverError]] = {
    400: errors.Rejected,
    408: errors.GenerationFailed,
    500: errors.GenerationFailed,
    501: errors.GenerationFailed,
    531: errors.GenerationFailed,
}

_envelope = EnvelopeSchema()
_callback = CallbackSchema()


@dataclass(frozen=True)
class ExistingCover:
    """A 400/409 that names the cover already made for this music task."""

    cover_task_id: str
    code: int
    message: str


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, 24 * 3600.0))


def error_for(
    code: int, message: str, table: str = "kie", retry_after: float | None = None
) -> errors.CoverError:
    """The typed error for an answer code that is not a success."""
    cls = CODE_TABLES[table].get(code)
    if cls is None:
        cls = errors.UpstreamError if code >= 500 else errors.UnknownAnswer
    return cls(message or f"Kie answered code {code}", code, retry_after)


def _short(body: bytes) -> str:
    """The start of a body, for a message: one line, credentials masked (a key cut in
    two by the 120-byte limit is masked by the client's literal masking first)."""
    text = body[:2048].decode("utf-8", "replace").replace("\n", " ").strip()
    return PATTERNS_ONLY(text)[:120] or "(empty)"


def interpret(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    table: str = "kie",
) -> Any:
    """Return ``data`` of a successful Kie answer, or raise the matching error.

    Args:
        status: the HTTP status.
        headers: the answer's headers (case-insensitive mapping preferred).
        body: the raw body bytes.
        table: which code table to use (``KIE_CODE_TABLE``).

    Returns:
        The envelope's ``data`` (any JSON value) when the body's code is 200, or an
        `ExistingCover` for a 400/409 that names the existing cover.
    """
    retry_after = parse_retry_after(headers.get("Retry-After"))
    try:
        document = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        # An HTML page from a proxy, an empty body, or broken JSON. The HTTP status
        # is all we know; a 2xx with an unreadable body is still an upstream fault.
        if status >= 300:
            err = error_for(status, f"HTTP {status} with a non-JSON body: {_short(body)}",
                            table, retry_after)
            if isinstance(err, errors.PermanentError) and status not in (401, 404, 422):
                raise errors.UpstreamError(err.message, status, retry_after)
            raise err
        raise errors.UpstreamError(f"malformed answer: {_short(body)}", status, retry_after)
    try:
        envelope = validate_with(_envelope, document, "Kie answer")
    except errors.InvalidPayload as bad:
        raise errors.UpstreamError(
            f"malformed answer: {bad.message}", status, retry_after) from None
    code: int = envelope["code"]
    message: str = PATTERNS_ONLY(envelope["msg"] or "")
    if code == 200:
        return envelope["data"]
    if code in (400, 409) and CODE_TABLES[table].get(code) is errors.AlreadyGenerated:
        data = envelope["data"]
        existing = data.get("taskId") if isinstance(data, dict) else None
        if isinstance(existing, str) and existing:
            return ExistingCover(existing, code, message)
    raise error_for(code, message, table, retry_after)


@dataclass(frozen=True)
class CallbackOutcome:
    """What a callback says: the cover task id, and images or an error."""

    cover_task_id: str
    images: list[str] | None
    error: errors.CoverError | None


def interpret_callback(body: Any) -> CallbackOutcome:
    """Read a callback body (already JSON-decoded); raise `InvalidPayload` if malformed."""
    loaded = validate_with(_callback, body, "callback")
    data = loaded["data"]
    code: int = loaded["code"]
    message: str = PATTERNS_ONLY(loaded["msg"] or "")
    if code == 200:
        images = data.get("images") or []
        if not images:
            raise errors.InvalidPayload(
                "invalid callback: data.images: a success callback must list images",
                detail={"fields": {"data.images": ["must list at least one image"]}},
            )
        return CallbackOutcome(data["taskId"], list(images), None)
    cls = CALLBACK_CODES.get(code, errors.GenerationFailed)
    return CallbackOutcome(
        data["taskId"], None, cls(message or f"cover failed with code {code}", code)
    )
