"""Which code answers which request: Kie's three API calls, the cover pictures, the controls.

Per API call, in order: read the request's style (``X-Standin-Style``; an
unknown token answers 422), count it, apply an injected fault, refuse an
oversized body (413), authenticate (401), check the method (405), then the
endpoint itself.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from email.message import Message
from urllib.parse import parse_qs, urlsplit

from .admin import admin_answer
from .config import StandinConfig
from .covers import FLAG_SUCCESS, IMAGES_PER_COVER, record_info_data
from .faults import serve_fault
from .png import cover_png
from .protocol import ENDPOINT_PATHS, MAX_BODY_BYTES, NO_DATA, Answer, envelope
from .state import (
    Accepted,
    AlreadyGenerated,
    GenerateOutcome,
    OutOfCredits,
    RateLimited,
    StandinState,
)
from .style import STYLE_HEADER, Style, StyleDefaults

#: Music task ids starting with this answer 404, so callers can test unknown tasks.
MISSING_MUSIC_PREFIX = "notfound"
#: Messages of a generate for a music task that already has a cover, by code.
_DUPLICATE_MESSAGES = {
    400: "cover already generated for this task",
    409: "cover record already exists",
}
_FILE_PATH = re.compile(r"^/files/([0-9A-Za-z_-]{1,128})/(\d{1,3})\.png$")


def _is_http_url(value: object) -> bool:
    """True for an absolute http(s) URL with a host."""
    if not isinstance(value, str) or not value:
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _parse_generate(body: bytes) -> tuple[str, str] | str:
    """``(taskId, callBackUrl)`` from a generate body, or what is wrong with it."""
    try:
        payload = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        payload = None
    if not isinstance(payload, dict):
        return "request body must be a JSON object with taskId and callBackUrl"
    music_id = payload.get("taskId")
    if not isinstance(music_id, str) or not music_id.strip():
        return "taskId is required and must be a non-empty string"
    callback_url = payload.get("callBackUrl")
    if not _is_http_url(callback_url):
        return "callBackUrl is required and must be an absolute http(s) URL"
    assert isinstance(callback_url, str)  # for the type checker; _is_http_url ensured it
    return music_id, callback_url


class Router:
    """Answers requests from the server's handler threads; thread-safe."""

    def __init__(
        self,
        config: StandinConfig,
        state: StandinState,
        on_cover_finished: Callable[[str, int], None],
        base_url: Callable[[], str],
        styles: StyleDefaults,
    ) -> None:
        """Route requests against ``state``.

        Args:
            config: API keys and costs; read at each request.
            state: the stand-in's state.
            on_cover_finished: called ``(cover_id, epoch)`` on a timer thread
                when an accepted cover finishes (sends its callback).
            base_url: gives the stand-in's base URL, for the picture URLs.
            styles: the default answer style, which a request's
                ``X-Standin-Style`` header may override.
        """
        self._config = config
        self._state = state
        self._on_cover_finished = on_cover_finished
        self._base_url = base_url
        self._styles = styles

    def handle(
        self, method: str, raw_path: str, headers: Message, body: bytes, oversize: bool
    ) -> Answer:
        """Answer one HTTP request.

        Args:
            method: the HTTP method, upper case.
            raw_path: the request target, query string included.
            headers: the request headers.
            body: the request body; empty when ``oversize``.
            oversize: True when the body was over ``MAX_BODY_BYTES`` and not read.
        """
        parts = urlsplit(raw_path)
        path = parts.path
        if path.startswith("/_standin/"):
            return admin_answer(self._state, self._styles, method, path, body)
        try:
            style = self._styles.get().with_header(headers.get(STYLE_HEADER))
        except ValueError as exc:
            return envelope(422, str(exc), style=self._styles.get())
        if path.startswith("/files/"):
            return self._file(method, path, style)
        endpoint = ENDPOINT_PATHS.get(path)
        if endpoint is None:
            if path.startswith("/api/") and self._key_of(headers) is None:
                return envelope(401, "You do not have access permissions", style=style)
            return envelope(404, "not found", style=style)

        fault = self._state.begin_call(endpoint)
        answer = None
        if fault is not None:
            # The state lock is not held here, so other calls go on while a fault waits.
            answer = serve_fault(fault, style=style)
        if answer is None:
            answer = self._api(endpoint, method, parts.query, headers, body, oversize, style)
        self._state.count_answer(endpoint, answer.label)
        return answer

    def _key_of(self, headers: Message) -> str | None:
        """The API key from ``Authorization: Bearer <key>`` when it is accepted, else None."""
        value = headers.get("Authorization") or ""
        scheme, _, key = value.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        found = None
        for candidate in self._config.api_keys:
            # Constant-time comparison, as a real server should; checks them all.
            if hmac.compare_digest(candidate.encode(), key.encode()):
                found = candidate
        return found

    def _api(
        self,
        endpoint: str,
        method: str,
        query: str,
        headers: Message,
        body: bytes,
        oversize: bool,
        style: Style,
    ) -> Answer:
        """An API endpoint once past any fault: size, auth, method, then the endpoint itself."""
        if oversize:
            return envelope(413, f"request body larger than {MAX_BODY_BYTES} bytes", style=style)
        key = self._key_of(headers)
        if key is None:
            return envelope(401, "You do not have access permissions", style=style)
        wanted = "POST" if endpoint == "generate" else "GET"
        if method != wanted:
            return envelope(405, f"method {method} not allowed; use {wanted}", style=style)
        if endpoint == "generate":
            return self._generate(key, body, style)
        if endpoint == "record-info":
            return self._record_info(query, style)
        return envelope(200, "success", self._state.credits(), style=style)

    def _generate(self, key: str, body: bytes, style: Style) -> Answer:
        """``POST /api/v1/suno/cover/generate`` after auth, for API key ``key``."""
        request = _parse_generate(body)
        if isinstance(request, str):
            return envelope(422, request, style=style)
        music_id, callback_url = request
        if music_id.startswith(MISSING_MUSIC_PREFIX):
            return envelope(404, "music task not found", style=style)
        outcome = self._state.accept_generate(key, music_id, callback_url, self._on_cover_finished)
        return self._generate_answer(outcome, style)

    @staticmethod
    def _generate_answer(outcome: GenerateOutcome, style: Style) -> Answer:
        """The envelope telling the client what became of its generate.

        A music task that already has a cover answers ``style.duplicate_code``
        (400 or 409) with the existing cover's ``data.taskId``.
        """
        match outcome:
            case Accepted(cover_id):
                return envelope(200, "success", {"taskId": cover_id}, style=style)
            case RateLimited(retry_after_s):
                return envelope(
                    429,
                    "Your call frequency is too high. Please try again later.",
                    headers={"Retry-After": str(retry_after_s)},
                    style=style,
                )
            case AlreadyGenerated(cover_id):
                code = style.duplicate_code
                return envelope(code, _DUPLICATE_MESSAGES[code], {"taskId": cover_id}, style=style)
            case OutOfCredits():
                return envelope(402, "insufficient credits", NO_DATA, style=style)

    def _record_info(self, query: str, style: Style) -> Answer:
        """``GET /api/v1/suno/cover/record-info?taskId=`` after auth."""
        task_ids = parse_qs(query).get("taskId")
        if not task_ids or not task_ids[0].strip():
            return envelope(422, "taskId is required", style=style)
        found = self._state.cover(task_ids[0])
        if found is None:
            return envelope(404, "task not found", style=style)
        cover, flag = found
        data = record_info_data(cover, flag, self._base_url(), style)
        return envelope(200, "success", data, style=style)

    def _file(self, method: str, path: str, style: Style) -> Answer:
        """``GET /files/<cover id>/<n>.png``: a finished cover's picture; no auth."""
        match = _FILE_PATH.match(path)
        if method != "GET" or match is None:
            return envelope(404, "file not found", style=style)
        cover_id, index = match.group(1), int(match.group(2))
        found = self._state.cover(cover_id)
        ready = found is not None and found[1] == FLAG_SUCCESS
        if not ready or index >= IMAGES_PER_COVER:
            return envelope(404, "file not found", style=style)
        return Answer(200, cover_png(cover_id, index), "image/png", label="200")
