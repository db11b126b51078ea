"""How answers are shaped where real Kie answers are known to vary.

Kie's documents give one shape; answers seen in the wild differ in a few
ways. A :class:`Style` picks one side of each, so a client can be tested
against both:

- ``code_form``: ``"status"`` (default): an error code is the HTTP status
  too; ``"body"``: HTTP 200, the code only in the body envelope.
- ``error_data``: ``"absent"`` (default, as the docs show
  ``{"code": 401, "msg": "..."}``): error envelopes carry no ``data``;
  ``"null"``: they carry ``"data": null``.
- ``time_format``: ``"iso"`` (default, as Kie's published examples:
  ``"2025-01-15T10:33:01.000Z"``): record-info's ``createTime`` and
  ``completeTime`` are ISO-8601 UTC strings; ``"epoch-ms"``: integers,
  milliseconds since the epoch.
- ``unset_fields``: ``"documented"`` (default): record-info's
  ``errorMessage`` is ``""`` until a failure, ``response`` is an object
  (``{}`` until success), ``errorCode`` and ``completeTime`` are left out
  until the cover ends; ``"null"``: those unset fields are ``null`` (and a
  failure callback's ``data.images`` is ``null``).
- ``duplicate_code``: ``400`` (default, as the docs say) or ``409``: the
  code of a generate for a music task that already has a cover; both carry
  the existing cover's ``data.taskId``.

The stand-in's default style comes from :class:`StandinConfig` and can be
changed while it runs (``KieStandin.set_style``, ``POST /_standin/style``).
One request can override it with the ``X-Standin-Style`` header: a comma
separated list of the tokens in :data:`STYLE_TOKENS` (e.g.
``code-in-body, data-null``). Callbacks answer no request: they follow the
default style at the moment the cover ends.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

#: Request header naming per-request style tokens (see :data:`STYLE_TOKENS`).
STYLE_HEADER = "X-Standin-Style"

#: The values each style field accepts.
STYLE_CHOICES: dict[str, tuple[Any, ...]] = {
    "code_form": ("status", "body"),
    "error_data": ("absent", "null"),
    "time_format": ("iso", "epoch-ms"),
    "unset_fields": ("documented", "null"),
    "duplicate_code": (400, 409),
}

#: ``X-Standin-Style`` tokens: token -> (style field, value).
STYLE_TOKENS: dict[str, tuple[str, Any]] = {
    "code-in-status": ("code_form", "status"),
    "code-in-body": ("code_form", "body"),
    "data-absent": ("error_data", "absent"),
    "data-null": ("error_data", "null"),
    "iso-times": ("time_format", "iso"),
    "epoch-times": ("time_format", "epoch-ms"),
    "documented-fields": ("unset_fields", "documented"),
    "null-fields": ("unset_fields", "null"),
    "duplicate-400": ("duplicate_code", 400),
    "duplicate-409": ("duplicate_code", 409),
}


@dataclass(frozen=True)
class Style:
    """One choice per way Kie's answers vary; the defaults are the documented shape.

    Attributes:
        code_form: ``"status"`` or ``"body"``; default ``"status"``.
        error_data: ``"absent"`` or ``"null"``; default ``"absent"``.
        time_format: ``"iso"`` or ``"epoch-ms"``; default ``"iso"``.
        unset_fields: ``"documented"`` or ``"null"``; default ``"documented"``.
        duplicate_code: ``400`` or ``409``; default ``400``.
    """

    code_form: str = "status"
    error_data: str = "absent"
    time_format: str = "iso"
    unset_fields: str = "documented"
    duplicate_code: int = 400

    def __post_init__(self) -> None:
        """Refuse a value outside :data:`STYLE_CHOICES`.

        Raises:
            ValueError: naming the field and the values it accepts.
        """
        for item in fields(self):
            value = getattr(self, item.name)
            choices = STYLE_CHOICES[item.name]
            if isinstance(value, bool) or value not in choices:
                raise ValueError(f"{item.name} must be one of {list(choices)}, got {value!r}")

    @property
    def code_in_body(self) -> bool:
        """True when error codes go only in the body (HTTP 200)."""
        return self.code_form == "body"

    def with_changes(self, changes: dict[str, Any]) -> Style:
        """A copy with ``changes`` (style field -> value) applied.

        Raises:
            ValueError: on an unknown field or a value it does not accept.
        """
        unknown = sorted(set(changes) - set(STYLE_CHOICES))
        if unknown:
            raise ValueError(f"unknown style field(s) {unknown}; use {sorted(STYLE_CHOICES)}")
        return replace(self, **changes)

    def with_header(self, header: str | None) -> Style:
        """A copy with the ``X-Standin-Style`` tokens in ``header`` applied (None = none).

        Raises:
            ValueError: on an unknown token.
        """
        if not header:
            return self
        changes: dict[str, Any] = {}
        for raw in header.split(","):
            token = raw.strip().lower()
            if not token:
                continue
            if token not in STYLE_TOKENS:
                raise ValueError(
                    f"unknown {STYLE_HEADER} token {token!r}; use {sorted(STYLE_TOKENS)}"
                )
            name, value = STYLE_TOKENS[token]
            changes[name] = value
        return self.with_changes(changes)

    def as_dict(self) -> dict[str, Any]:
        """The style as a JSON-ready dict."""
        return asdict(self)


class StyleDefaults:
    """The stand-in's current default style; thread-safe."""

    def __init__(self, initial: Style) -> None:
        """Start (and later reset) with ``initial``."""
        self._initial = initial
        self._current = initial
        self._lock = threading.Lock()

    def get(self) -> Style:
        """The current default style."""
        with self._lock:
            return self._current

    def update(self, changes: dict[str, Any]) -> Style:
        """Change some fields of the default style; returns the new style.

        Raises:
            ValueError: on an unknown field or value (nothing changes then).
        """
        with self._lock:
            self._current = self._current.with_changes(changes)
            return self._current

    def reset(self) -> None:
        """Back to the style the stand-in started with."""
        with self._lock:
            self._current = self._initial
