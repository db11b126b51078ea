"""The failures filter as the web reads it from a query string: one set of rules for
the HTTP API (``GET /v1/failures``) and the console (``/console/api/failures``).

Each parameter is checked on its own, so a client is told every bad one at once
(`FieldError`: field, rule, message), the way the rest of the HTTP API answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from kie_covers.core.problems import FieldError

#: Failures listed when ``limit`` is not given.
DEFAULT_LIMIT = 50
#: The most a client may ask for in one page (the API's; the console asks for less).
MAX_LIMIT = 1000
#: The highest ``offset`` accepted (deeper pages: filter by time instead).
MAX_OFFSET = 1_000_000
#: The query parameters the filter knows.
PARAMETERS = ("kind", "code", "since", "until", "limit", "offset")

_KIND = re.compile(r"[a-z_]{1,64}")
_CODE = re.compile(r"none|-?[0-9]{1,9}")
_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")
_WHOLE = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class FailureFilter:
    """Which failed jobs to list, and which page.

    Attributes:
        kind: only this error kind (``upstream``), None for all.
        code: only this API code; ``"none"`` for failures without one; None for all.
        since, until: only failures from / up to this unix time (seconds), None for no
            bound.
        limit: the most rows (default `DEFAULT_LIMIT`).
        offset: rows skipped, newest first (default 0).
    """

    kind: str | None = None
    code: int | str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def parse_failure_filter(query: Mapping[str, str], *, max_limit: int = MAX_LIMIT,
                         refuse_unknown: bool = True
                         ) -> tuple[FailureFilter, list[FieldError]]:
    """The filter `query` asks for, and every rule it breaks (empty when none).

    Args:
        query: the query parameters (one value each).
        max_limit: the highest ``limit`` allowed (default `MAX_LIMIT`).
        refuse_unknown: whether a parameter outside `PARAMETERS` is an error
            (``unknown_field``); default True.
    """
    errors = [FieldError(name, "unknown_field", "Unknown field.") for name in query
              if refuse_unknown and name not in PARAMETERS]
    kind = query.get("kind")
    if kind is not None and not _KIND.fullmatch(kind):
        errors.append(FieldError("kind", "pattern", "must be an error kind such as upstream "
                                 "(1 to 64 of a-z and _)"))
        kind = None
    code: int | str | None = query.get("code")
    if isinstance(code, str):
        if not _CODE.fullmatch(code):
            errors.append(FieldError("code", "pattern", "must be an API code such as 500, "
                                     "or none"))
            code = None
        elif code != "none":
            code = int(code)
    since, until = (_seconds(query, name, errors) for name in ("since", "until"))
    limit = _whole(query, "limit", DEFAULT_LIMIT, 1, max_limit, errors)
    offset = _whole(query, "offset", 0, 0, MAX_OFFSET, errors)
    return FailureFilter(kind, code, since, until, limit, offset), errors


def _seconds(query: Mapping[str, str], name: str, errors: list[FieldError]) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not _SECONDS.fullmatch(raw):
        errors.append(FieldError(name, "type", "must be unix seconds"))
        return None
    return float(raw)


def _whole(query: Mapping[str, str], name: str, default: int, low: int, high: int,
           errors: list[FieldError]) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not _WHOLE.fullmatch(raw):
        errors.append(FieldError(name, "type", "must be a whole number"))
        return default
    value = int(raw)
    if not low <= value <= high:
        errors.append(FieldError(name, "range", f"must be from {low} to {high}"))
        return default
    return value
