"""``/_standin/*``: control and read a stand-in over plain HTTP (no auth).

For scripts and processes that cannot call :class:`KieStandin`'s methods;
each route does what the method of the same name does:

- ``GET /_standin/state``: the ``state()`` dict;
- ``POST /_standin/reset``; ``DELETE /_standin/faults``: ``clear_faults()``;
- ``POST /_standin/faults`` ``{"endpoint", "fault", "times", "retry_after", "delay_s",
  "form", "data"}``;
- ``POST /_standin/style`` ``{"code_form", "error_data", "time_format", "unset_fields",
  "duplicate_code"}`` (any of them): ``set_style()``;
- ``POST /_standin/credits`` ``{"credits"}``;
- ``POST /_standin/callback-mode`` ``{"mode", "delay_s"}``;
- ``POST /_standin/rate-limit`` ``{"count", "per_seconds"}`` (no count = unlimited).

Answers are plain JSON: ``{"ok": true}``, or HTTP 400/404 with ``{"ok":
false, "error"}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .faults import new_fault
from .protocol import Answer, json_answer
from .state import StandinState
from .style import StyleDefaults

_OK = {"ok": True}


def _inject(state: StandinState, args: dict[str, Any]) -> None:
    """``POST /_standin/faults``: like ``KieStandin.inject``; endpoint defaults to "any"."""
    retry_after: Any = args.get("retry_after")
    if isinstance(retry_after, int) and not isinstance(retry_after, bool):
        retry_after = str(retry_after)  # {"retry_after": 3} means "3"
    state.add_fault(
        new_fault(
            args.get("endpoint", "any"),
            args.get("fault", ""),
            args.get("times", 1),
            retry_after=retry_after,
            delay_s=args.get("delay_s", 0.0) or 0.0,
            form=args.get("form"),
            data=args.get("data"),
        )
    )


def _set_credits(state: StandinState, args: dict[str, Any]) -> None:
    """``POST /_standin/credits``: like ``KieStandin.set_credits``."""
    credits: Any = args.get("credits")  # any JSON value: set_credits() checks it
    state.set_credits(credits)


def _set_callback_mode(state: StandinState, args: dict[str, Any]) -> None:
    """``POST /_standin/callback-mode``: like ``KieStandin.set_callback_mode``."""
    state.set_callback_mode(args.get("mode", "send"), args.get("delay_s", 0.0) or 0.0)


def _set_rate_limit(state: StandinState, args: dict[str, Any]) -> None:
    """``POST /_standin/rate-limit``: like ``KieStandin.set_rate_limit``; window default 10 s."""
    count = args.get("count")
    if count is None:
        state.set_rate_limit(None)
    else:
        state.set_rate_limit((count, args.get("per_seconds", 10.0)))


#: The POST routes that take a JSON object of arguments, by path.
_SETTERS: dict[str, Callable[[StandinState, dict[str, Any]], None]] = {
    "/_standin/faults": _inject,
    "/_standin/credits": _set_credits,
    "/_standin/callback-mode": _set_callback_mode,
    "/_standin/rate-limit": _set_rate_limit,
}


def _json_object(body: bytes) -> dict[str, Any]:
    """A control request's JSON object body (empty = ``{}``).

    Raises:
        ValueError: when the body is not JSON or not an object.
    """
    args = json.loads(body.decode("utf-8")) if body else {}
    if not isinstance(args, dict):
        raise ValueError("body must be a JSON object")
    return args


def admin_answer(
    state: StandinState, styles: StyleDefaults, method: str, path: str, body: bytes
) -> Answer:
    """Answer ``method`` on ``path`` (which starts ``/_standin/``) with request ``body``."""
    route = (method, path.rstrip("/"))  # a trailing slash is forgiven
    if route == ("GET", "/_standin/state"):
        return json_answer(200, {**state.snapshot(), "style": styles.get().as_dict()})
    if route == ("DELETE", "/_standin/faults"):
        state.clear_faults()
        return json_answer(200, _OK)
    if route == ("POST", "/_standin/reset"):
        state.reset()
        styles.reset()
        return json_answer(200, _OK)
    setter = _SETTERS.get(route[1]) if method == "POST" else None
    if setter is None and route != ("POST", "/_standin/style"):
        return json_answer(404, {"ok": False, "error": f"no admin route {method} {path}"})
    try:
        args = _json_object(body)
        if setter is None:
            styles.update(args)  # POST /_standin/style: like KieStandin.set_style
        else:
            setter(state, args)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        return json_answer(400, {"ok": False, "error": str(exc)})
    return json_answer(200, _OK)
