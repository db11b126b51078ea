"""A loopback HTTP stand-in for Kie's Suno cover API.

It behaves like ``https://api.kie.ai`` for the three calls the project makes
(generate a cover, read its details, read the credits), serves the cover
pictures, and sends the completion callbacks, so that developers, tests, the
demo and benchmarks never spend credits. Faults seen in the wild (rate limits,
maintenance, proxies answering HTML or nothing, dropped connections) can be
injected on demand, and everything the stand-in did can be read back
(ledger of paid generations, calls, answers, callbacks).

It only ever binds to and contacts loopback addresses.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import math
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from .png import cover_png

__all__ = ["KieStandin", "StandinConfig", "main"]

GENERATE_PATH = "/api/v1/suno/cover/generate"
RECORD_INFO_PATH = "/api/v1/suno/cover/record-info"
CREDIT_PATH = "/api/v1/chat/credit"

#: API endpoints by request path; the names are used by faults and counters.
ENDPOINT_PATHS: dict[str, str] = {
    GENERATE_PATH: "generate",
    RECORD_INFO_PATH: "record-info",
    CREDIT_PATH: "credit",
}
ENDPOINTS: tuple[str, ...] = ("generate", "record-info", "credit")
FAULT_ENDPOINTS: frozenset[str] = frozenset(ENDPOINTS) | {"any"}

#: Faults answering a normal error envelope: code -> message (Kie's wording
#: where known).
_ENVELOPE_FAULTS: dict[str, tuple[int, str]] = {
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
_BODY_FAULTS: dict[str, tuple[int, str]] = {
    "body-429": _ENVELOPE_FAULTS["429"],
    "body-455": _ENVELOPE_FAULTS["455"],
    "body-500": _ENVELOPE_FAULTS["500"],
}
FAULT_KINDS: frozenset[str] = (
    frozenset(_ENVELOPE_FAULTS)
    | frozenset(_BODY_FAULTS)
    | {"malformed", "html", "empty", "reset", "slow", "no-data"}
)
CALLBACK_MODES: frozenset[str] = frozenset({"send", "drop", "duplicate", "delay"})

#: Largest request body read, bytes (1 MiB); larger ones answer 413.
MAX_BODY_BYTES = 1 << 20
#: Oversized bodies up to this many bytes are read and thrown away so the
#: connection survives; beyond it the connection is closed after the 413.
_DISCARD_MAX_BYTES = 16 << 20
#: Kie gives callback receivers 15 seconds; so does the stand-in.
CALLBACK_TIMEOUT_S = 15.0
#: Kie usually makes two pictures per cover.
IMAGES_PER_COVER = 2
#: Hosts a callback may be sent to: this machine only, never the network.
_LOOPBACK_CALLBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Accepted-generation times remembered per key for the rate window.
_WINDOW_MAX = 100_000
_FILE_PATH = re.compile(r"^/files/([0-9A-Za-z_-]{1,128})/(\d{1,3})\.png$")
_STATUS_BY_FLAG = {0: "PENDING", 1: "SUCCESS", 2: "GENERATING", 3: "GENERATE_COVER_FAILED"}

_MALFORMED_BODY = b'{"code": 200, "msg": '
_HTML_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center>"
    b"</body></html>\n"
)


@dataclass
class StandinConfig:
    """How a :class:`KieStandin` behaves. All fields have working defaults.

    Attributes:
        host: address to bind and to put in URLs; must be a loopback address
            or ``"localhost"``. Default ``"127.0.0.1"``.
        port: TCP port; default 0 picks a free one (read it from
            :attr:`KieStandin.base_url`).
        api_keys: accepted ``Authorization: Bearer`` keys; default
            ``("standin-key",)``.
        rate_limit: ``(count, per_seconds)``: at most ``count`` accepted
            generations per key in any sliding window of ``per_seconds``
            seconds; ``None`` = unlimited. Default ``(20, 10.0)`` like Kie.
        cover_seconds: seconds from an accepted generate to the finished
            cover; half-way it turns from pending to generating. Default 0.5.
        credits: starting credits; default 1000.0.
        cost_per_cover: credits charged per accepted generate; default 1.0.
        webhook_hmac_key: when set, callbacks carry ``X-Webhook-Timestamp``
            and ``X-Webhook-Signature``; default ``None`` (unsigned).
        codes_in_body_only: when True, API error answers use HTTP 200 with
            the code only in the body envelope; default False (the code is the
            HTTP status too).
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: tuple[str, ...] = ("standin-key",)
    rate_limit: tuple[int, float] | None = (20, 10.0)
    cover_seconds: float = 0.5
    credits: float = 1000.0
    cost_per_cover: float = 1.0
    webhook_hmac_key: str | None = None
    codes_in_body_only: bool = False


@dataclass
class _Fault:
    """One injected fault rule; ``remaining`` None = until cleared."""

    endpoint: str
    kind: str
    remaining: int | None
    retry_after: str | None
    delay_s: float


@dataclass
class _Cover:
    """One cover task. Progress is computed from the timestamps on demand."""

    cover_id: str
    music_id: str
    callback_url: str
    create_ms: int  # wall clock, ms since the epoch, as Kie reports it
    created_mono: float  # time.monotonic() at accept, for progress
    duration_s: float  # cover_seconds when accepted, so later changes don't move it
    fails: bool
    # The callback mode when accepted: a later set_callback_mode() applies to
    # later generations only, so tests can set it without racing covers.
    callback_mode: str = "send"
    callback_delay_s: float = 0.0

    def flag(self, now_mono: float) -> int:
        """Kie's successFlag at ``now_mono``: 0 pending, 2 generating, 1 ok, 3 failed."""
        elapsed = now_mono - self.created_mono
        if elapsed >= self.duration_s:
            return 3 if self.fails else 1
        if elapsed >= self.duration_s / 2:
            return 2
        return 0


@dataclass
class _Answer:
    """What to send back for one request."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    label: str = ""  # key suffix in answers(): the body code, or the fault name
    reset: bool = False  # drop the connection instead of answering


def _json_answer(status: int, payload: Any) -> _Answer:
    """A plain JSON answer (admin endpoints), not wrapped in an envelope."""
    return _Answer(status, json.dumps(payload).encode(), label=str(status))


def _is_http_url(value: object) -> bool:
    """True for an absolute http(s) URL with a host."""
    if not isinstance(value, str) or not value:
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _is_loopback_callback(url: str) -> bool:
    """True when ``url`` is plain http to this machine; only those are contacted."""
    try:
        parts = urlsplit(url)
        return parts.scheme == "http" and parts.hostname in _LOOPBACK_CALLBACK_HOSTS
    except ValueError:
        return False


def _check_loopback_host(host: str) -> None:
    """Refuse to bind anywhere but loopback: this machine must stay unreachable."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"host must be a loopback address or 'localhost', got {host!r}") from exc
    if not address.is_loopback:
        raise ValueError(f"host must be a loopback address, got {host!r}")


def _signature(key: str, task_id: str, timestamp: str) -> str:
    """Kie's webhook signature: base64(HMAC-SHA256(key, f"{taskId}.{timestamp}"))."""
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a receiver's redirect: it could point off this machine."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


# No proxies (an http_proxy variable would send loopback callbacks off the
# machine) and no redirects.
_CALLBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class KieStandin:
    """A running (after :meth:`start`) stand-in for Kie's Suno cover API.

    Use as a context manager (``with KieStandin(config) as kie:``) or call
    :meth:`start` and :meth:`stop`. Point the client at :attr:`base_url` with
    one of ``config.api_keys``. Every method is thread-safe.
    """

    def __init__(self, config: StandinConfig | None = None) -> None:
        """Prepare a stand-in; nothing is bound until :meth:`start`.

        Raises:
            ValueError: when ``config.host`` is not a loopback address.
        """
        self._config = config if config is not None else StandinConfig()
        _check_loopback_host(self._config.host)
        # One lock around all mutable state below.
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._init_state()

    # -- state ------------------------------------------------------------

    def _init_state(self) -> None:
        """Set every piece of state to its starting value (caller holds the lock or is __init__)."""
        self._credits: float = self._config.credits
        self._rate_limit: tuple[int, float] | None = self._config.rate_limit
        self._callback_mode = "send"
        self._callback_delay_s = 0.0
        self._faults: list[_Fault] = []
        self._covers: dict[str, _Cover] = {}
        self._cover_by_music: dict[str, str] = {}
        self._paid: dict[str, int] = {}
        self._counts: dict[str, int] = {name: 0 for name in ENDPOINTS}
        self._answers: dict[str, int] = {}
        self._generate_times: list[float] = []
        self._windows: dict[str, deque[float]] = {}
        self._callbacks_sent = 0
        self._timers: dict[str, threading.Timer] = {}
        # Bumped by reset() so callbacks already under way are not counted
        # against the fresh state.
        self._epoch = getattr(self, "_epoch", 0) + 1

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> KieStandin:
        """Bind ``config.host:config.port`` and serve in a daemon thread.

        Returns:
            ``self``, so ``kie = KieStandin().start()`` works.

        Raises:
            RuntimeError: when already started.
            OSError: when the port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        server = _Server(self._config.host, self._config.port, self)
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # fast stop(); idle cost is negligible
            name=f"kie-standin:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and cancel pending callbacks. Idempotent."""
        server, thread = self._server, self._thread
        self._server = None
        self._thread = None
        with self._lock:
            self._epoch += 1
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> KieStandin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def config(self) -> StandinConfig:
        """The configuration this stand-in was made with (do not mutate)."""
        return self._config

    @property
    def base_url(self) -> str:
        """``"http://<host>:<port>"`` with no trailing slash.

        Raises:
            RuntimeError: before the first :meth:`start`.
        """
        if self._port is None:
            raise RuntimeError("stand-in not started")
        host = self._config.host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    # -- control ------------------------------------------------------------

    def inject(
        self,
        endpoint: str,
        fault: str,
        times: int | None = 1,
        *,
        retry_after: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Make the next calls to ``endpoint`` misbehave.

        Rules are consulted in the order they were injected; the first that
        matches a call applies to it and uses up one of its ``times``. Faults
        apply before authentication, and a faulted generate is never accepted
        nor charged.

        Args:
            endpoint: ``"generate"``, ``"record-info"``, ``"credit"`` or
                ``"any"`` (all three).
            fault: one of ``"429"``, ``"455"``, ``"402"``, ``"500"``,
                ``"433"`` (error envelope, code also as HTTP status unless
                ``codes_in_body_only``); ``"body-429"``, ``"body-455"``,
                ``"body-500"`` (HTTP 200, code in the body only);
                ``"malformed"`` (HTTP 200, truncated JSON); ``"html"`` (HTTP
                502 HTML page); ``"empty"`` (HTTP 200, empty body);
                ``"reset"`` (connection reset, no answer); ``"slow"`` (wait
                ``delay_s`` then answer normally); ``"no-data"`` (HTTP 200,
                code 200, ``data`` null).
            times: how many calls it affects, at least 1; ``None`` = until
                :meth:`clear_faults`. Default 1.
            retry_after: value of a ``Retry-After`` header (seconds such as
                ``"3"`` or an HTTP date) added to the answer; default none.
            delay_s: seconds to wait before answering; for ``"slow"`` the
                point of the fault, for the others an extra. Default 0.

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
        with self._lock:
            self._faults.append(_Fault(endpoint, fault, times, retry_after, float(delay_s)))

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        with self._lock:
            self._faults.clear()

    def set_credits(self, credits: float) -> None:
        """Set the account's remaining credits (a number; may be fractional)."""
        if isinstance(credits, bool) or not isinstance(credits, (int, float)):
            raise ValueError(f"credits must be a number, got {credits!r}")
        with self._lock:
            self._credits = float(credits)

    def set_callback_mode(self, mode: str, delay_s: float = 0.0) -> None:
        """Choose how covers accepted from now on are announced when they finish.

        Args:
            mode: ``"send"`` (once, the default), ``"drop"`` (never),
                ``"duplicate"`` (twice) or ``"delay"`` (once, ``delay_s``
                seconds after the cover finished).
            delay_s: extra seconds for ``"delay"``; default 0.

        Raises:
            ValueError: on an unknown mode or a negative delay.
        """
        if mode not in CALLBACK_MODES:
            raise ValueError(f"unknown callback mode {mode!r}; use one of {sorted(CALLBACK_MODES)}")
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or delay_s < 0:
            raise ValueError(f"delay_s must be a non-negative number, got {delay_s!r}")
        with self._lock:
            self._callback_mode = mode
            self._callback_delay_s = float(delay_s)

    def set_rate_limit(self, rate_limit: tuple[int, float] | None) -> None:
        """Change the generate rate limit: ``(count, per_seconds)`` or ``None`` (unlimited).

        Generations already accepted keep counting in the new window.
        """
        if rate_limit is not None:
            count, per = rate_limit
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"rate limit count must be a non-negative int, got {count!r}")
            if isinstance(per, bool) or not isinstance(per, (int, float)) or per <= 0:
                raise ValueError(f"rate limit window must be positive seconds, got {per!r}")
            rate_limit = (count, float(per))
        with self._lock:
            self._rate_limit = rate_limit

    def reset(self) -> None:
        """Return to the state of a freshly started stand-in, keeping the port.

        Forgets covers, the ledger, counters, answers, generate times, rate
        windows and faults; cancels pending callbacks; credits, rate limit and
        callback mode go back to the configuration.
        """
        with self._lock:
            timers = list(self._timers.values())
            self._init_state()
        for timer in timers:
            timer.cancel()

    # -- observation --------------------------------------------------------

    def paid(self) -> dict[str, int]:
        """Ledger: music task id -> number of generate calls accepted and charged."""
        with self._lock:
            return dict(self._paid)

    def counts(self) -> dict[str, int]:
        """Calls received per endpoint, faulted ones included.

        Keys: ``generate``, ``record-info``, ``credit`` (always present).
        """
        with self._lock:
            return dict(self._counts)

    def answers(self) -> dict[str, int]:
        """How often each answer was given, keyed ``"<endpoint>:<code>"``.

        ``<code>`` is the envelope code (``"generate:200"``,
        ``"generate:429"``; body-only codes count under their code). Faults
        that answer no usable envelope count under their name instead:
        ``"generate:malformed"``, ``":html"``, ``":empty"``, ``":reset"``,
        ``":no-data"``.
        """
        with self._lock:
            return dict(self._answers)

    def generate_times(self) -> list[float]:
        """``time.monotonic()`` of every accepted generate, oldest first."""
        with self._lock:
            return list(self._generate_times)

    def callbacks_sent(self) -> int:
        """Callback POSTs made (including those the receiver failed or refused)."""
        with self._lock:
            return self._callbacks_sent

    def state(self) -> dict[str, Any]:
        """Everything observable at once, as ``GET /_standin/state`` answers it.

        Keys: paid, counts, answers, callbacks_sent, credits, generate_times
        (monotonic seconds), rate_limit (``[count, per_seconds]`` or null),
        callback_mode, faults (pending rules).
        """
        with self._lock:
            return {
                "paid": dict(self._paid),
                "counts": dict(self._counts),
                "answers": dict(self._answers),
                "callbacks_sent": self._callbacks_sent,
                "credits": self._credits,
                "generate_times": list(self._generate_times),
                "rate_limit": list(self._rate_limit) if self._rate_limit is not None else None,
                "callback_mode": self._callback_mode,
                "faults": [
                    {"endpoint": f.endpoint, "fault": f.kind, "times": f.remaining}
                    for f in self._faults
                ],
            }

    # -- request handling -----------------------------------------------------

    def _handle(
        self, method: str, raw_path: str, headers: Message, body: bytes, oversize: bool
    ) -> _Answer:
        """Answer one HTTP request (called from the server's handler threads)."""
        parts = urlsplit(raw_path)
        path = parts.path
        if path.startswith("/_standin/"):
            return self._admin(method, path, body)
        if path.startswith("/files/"):
            return self._file(method, path)
        endpoint = ENDPOINT_PATHS.get(path)
        if endpoint is None:
            if path.startswith("/api/") and self._key_of(headers) is None:
                return self._envelope(401, "You do not have access permissions")
            return self._envelope(404, "not found")

        with self._lock:
            self._counts[endpoint] += 1
            fault = self._take_fault(endpoint)
        answer = self._api(endpoint, method, parts.query, headers, body, oversize, fault)
        with self._lock:
            key = f"{endpoint}:{answer.label}"
            self._answers[key] = self._answers.get(key, 0) + 1
        return answer

    def _take_fault(self, endpoint: str) -> _Fault | None:
        """First matching fault rule, used up by one (caller holds the lock)."""
        for i, fault in enumerate(self._faults):
            if fault.endpoint in (endpoint, "any"):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[i]
                return fault
        return None

    def _envelope(
        self, code: int, msg: str, data: Any = None, headers: dict[str, str] | None = None
    ) -> _Answer:
        """Kie's ``{"code","msg","data"}`` answer.

        The code is the HTTP status too, unless ``codes_in_body_only``.
        """
        status = 200 if code == 200 or self._config.codes_in_body_only else code
        body = json.dumps({"code": code, "msg": msg, "data": data}).encode()
        return _Answer(status, body, headers=dict(headers or {}), label=str(code))

    def _fault_answer(self, fault: _Fault) -> _Answer:
        """The answer a (non-"slow") fault gives instead of the real one."""
        extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        kind = fault.kind
        if kind in _ENVELOPE_FAULTS:
            code, msg = _ENVELOPE_FAULTS[kind]
            return self._envelope(code, msg, headers=extra)
        if kind in _BODY_FAULTS:
            code, msg = _BODY_FAULTS[kind]
            body = json.dumps({"code": code, "msg": msg, "data": None}).encode()
            return _Answer(200, body, headers=extra, label=str(code))
        if kind == "malformed":
            return _Answer(200, _MALFORMED_BODY, headers=extra, label=kind)
        if kind == "html":
            return _Answer(502, _HTML_BODY, "text/html; charset=utf-8", extra, label=kind)
        if kind == "empty":
            return _Answer(200, b"", headers=extra, label=kind)
        if kind == "reset":
            return _Answer(0, reset=True, label=kind)
        if kind == "no-data":
            body = json.dumps({"code": 200, "msg": "success", "data": None}).encode()
            return _Answer(200, body, headers=extra, label=kind)
        raise AssertionError(f"unhandled fault {kind!r}")  # inject() validates kinds

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
        fault: _Fault | None,
    ) -> _Answer:
        """An API endpoint: fault, size, auth, method, then the endpoint itself."""
        if fault is not None:
            if fault.delay_s > 0:
                time.sleep(fault.delay_s)  # outside the lock: other calls go on
            if fault.kind != "slow":
                return self._fault_answer(fault)
        if oversize:
            return self._envelope(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        key = self._key_of(headers)
        if key is None:
            return self._envelope(401, "You do not have access permissions")
        wanted = "POST" if endpoint == "generate" else "GET"
        if method != wanted:
            return self._envelope(405, f"method {method} not allowed; use {wanted}")
        if endpoint == "generate":
            return self._generate(key, body)
        if endpoint == "record-info":
            return self._record_info(query)
        with self._lock:
            credits = self._credits
        return self._envelope(200, "success", credits)

    def _generate(self, key: str, body: bytes) -> _Answer:
        """``POST /api/v1/suno/cover/generate`` after auth."""
        try:
            payload = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError):
            payload = None
        if not isinstance(payload, dict):
            return self._envelope(
                422, "request body must be a JSON object with taskId and callBackUrl"
            )
        music_id = payload.get("taskId")
        if not isinstance(music_id, str) or not music_id.strip():
            return self._envelope(422, "taskId is required and must be a non-empty string")
        callback_url = payload.get("callBackUrl")
        if not _is_http_url(callback_url):
            return self._envelope(
                422, "callBackUrl is required and must be an absolute http(s) URL"
            )
        assert isinstance(callback_url, str)  # for the type checker; _is_http_url ensured it
        if music_id.startswith("notfound"):
            return self._envelope(404, "music task not found")

        with self._lock:
            now = time.monotonic()
            # Rate limit first, so a burst of duplicates is throttled too and
            # 429 protects the account, as Kie does.
            if self._rate_limit is not None:
                count, per = self._rate_limit
                window = self._windows.setdefault(key, deque(maxlen=_WINDOW_MAX))
                while window and window[0] <= now - per:
                    window.popleft()
                if len(window) >= count:
                    wait = (window[0] + per - now) if window else per
                    retry = str(max(1, math.ceil(wait)))
                    return self._envelope(
                        429,
                        "Your call frequency is too high. Please try again later.",
                        headers={"Retry-After": retry},
                    )
            existing_id = self._cover_by_music.get(music_id)
            if existing_id is not None:
                existing = self._covers[existing_id]
                # A failed generation left no cover, so a new attempt is allowed.
                if existing.flag(now) != 3:
                    return self._envelope(
                        400, "cover already generated for this task", {"taskId": existing_id}
                    )
            if self._credits < self._config.cost_per_cover:
                return self._envelope(402, "insufficient credits")

            cover_id = uuid.uuid4().hex
            cover = _Cover(
                cover_id=cover_id,
                music_id=music_id,
                callback_url=callback_url,
                create_ms=int(time.time() * 1000),
                created_mono=now,
                duration_s=max(0.0, self._config.cover_seconds),
                fails=music_id.startswith("genfail"),
                callback_mode=self._callback_mode,
                callback_delay_s=self._callback_delay_s,
            )
            self._covers[cover_id] = cover
            self._cover_by_music[music_id] = cover_id
            self._credits -= self._config.cost_per_cover
            self._paid[music_id] = self._paid.get(music_id, 0) + 1
            self._generate_times.append(now)
            # Recorded even while unlimited, so a limit set later counts
            # recent calls; bounded so an unlimited benchmark cannot grow it forever.
            self._windows.setdefault(key, deque(maxlen=_WINDOW_MAX)).append(now)
            timer = threading.Timer(
                cover.duration_s, self._cover_done, args=(cover_id, self._epoch)
            )
            timer.daemon = True
            self._timers[cover_id] = timer
            timer.start()
        return self._envelope(200, "success", {"taskId": cover_id})

    def _images(self, cover_id: str) -> list[str]:
        """Absolute URLs of a cover's pictures."""
        base = self.base_url
        return [f"{base}/files/{cover_id}/{n}.png" for n in range(IMAGES_PER_COVER)]

    def _record_info(self, query: str) -> _Answer:
        """``GET /api/v1/suno/cover/record-info?taskId=`` after auth."""
        task_ids = parse_qs(query).get("taskId")
        if not task_ids or not task_ids[0].strip():
            return self._envelope(422, "taskId is required")
        with self._lock:
            cover = self._covers.get(task_ids[0])
            if cover is None:
                return self._envelope(404, "task not found")
            flag = cover.flag(time.monotonic())
        finished = flag in (1, 3)
        data = {
            "taskId": cover.cover_id,
            "parentTaskId": cover.music_id,
            "callbackUrl": cover.callback_url,
            "createTime": cover.create_ms,
            "completeTime": cover.create_ms + round(cover.duration_s * 1000) if finished else None,
            "response": {"images": self._images(cover.cover_id)} if flag == 1 else None,
            "successFlag": flag,
            # Kie's docs: errorCode 200 on success, 500 with a message on failure.
            "errorCode": {1: 200, 3: 500}.get(flag),
            "errorMessage": "cover generation failed" if flag == 3 else None,
            "status": _STATUS_BY_FLAG[flag],
        }
        return self._envelope(200, "success", data)

    def _file(self, method: str, path: str) -> _Answer:
        """``GET /files/<cover id>/<n>.png``: a finished cover's picture; no auth."""
        match = _FILE_PATH.match(path)
        if method != "GET" or match is None:
            return self._envelope(404, "file not found")
        cover_id, index = match.group(1), int(match.group(2))
        with self._lock:
            cover = self._covers.get(cover_id)
            ready = cover is not None and cover.flag(time.monotonic()) == 1
        if not ready or index >= IMAGES_PER_COVER:
            return self._envelope(404, "file not found")
        return _Answer(200, cover_png(cover_id, index), "image/png", label="200")

    # -- callbacks ----------------------------------------------------------

    def _cover_done(self, cover_id: str, epoch: int) -> None:
        """Timer thread: the cover just finished; announce it per the callback mode."""
        with self._lock:
            self._timers.pop(cover_id, None)
            cover = self._covers.get(cover_id)
            if epoch != self._epoch or cover is None:
                return
            mode, delay_s = cover.callback_mode, cover.callback_delay_s
        if cover.fails:
            payload: dict[str, Any] = {
                "code": 501,
                "msg": "cover generation failed",
                "data": {"taskId": cover_id},
            }
        else:
            payload = {
                "code": 200,
                "msg": "success",
                "data": {"taskId": cover_id, "images": self._images(cover_id)},
            }
        if mode == "drop" or not _is_loopback_callback(cover.callback_url):
            return  # never contact anything off this machine
        if mode == "delay" and delay_s > 0:
            time.sleep(delay_s)
        for _ in range(2 if mode == "duplicate" else 1):
            self._send_callback(cover.callback_url, payload, epoch)

    def _send_callback(self, url: str, payload: dict[str, Any], epoch: int) -> None:
        """POST one callback; the receiver's errors are swallowed like Kie does."""
        with self._lock:
            if epoch != self._epoch:
                return  # reset or stopped meanwhile
        headers = {"Content-Type": "application/json", "User-Agent": "kie-standin"}
        key = self._config.webhook_hmac_key
        if key is not None:
            timestamp = str(int(time.time()))
            headers["X-Webhook-Timestamp"] = timestamp
            headers["X-Webhook-Signature"] = _signature(key, payload["data"]["taskId"], timestamp)
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode(), headers=headers, method="POST"
        )
        try:
            with _CALLBACK_OPENER.open(request, timeout=CALLBACK_TIMEOUT_S) as response:
                response.read()
        except Exception:
            pass  # any receiver failure counts as delivered, as on Kie
        with self._lock:
            if epoch == self._epoch:
                self._callbacks_sent += 1

    # -- admin ----------------------------------------------------------------

    def _admin(self, method: str, path: str, body: bytes) -> _Answer:
        """``/_standin/*``: control and read the stand-in over plain HTTP (no auth)."""
        route = (method, path.rstrip("/"))
        if route == ("GET", "/_standin/state"):
            return _json_answer(200, self.state())
        if route == ("DELETE", "/_standin/faults"):
            self.clear_faults()
            return _json_answer(200, {"ok": True})
        if route == ("POST", "/_standin/reset"):
            self.reset()
            return _json_answer(200, {"ok": True})
        if route not in {
            ("POST", "/_standin/faults"),
            ("POST", "/_standin/credits"),
            ("POST", "/_standin/callback-mode"),
            ("POST", "/_standin/rate-limit"),
        }:
            return _json_answer(404, {"ok": False, "error": f"no admin route {method} {path}"})
        try:
            args = json.loads(body.decode("utf-8")) if body else {}
            if not isinstance(args, dict):
                raise ValueError("body must be a JSON object")
            if path.rstrip("/") == "/_standin/faults":
                retry_after: Any = args.get("retry_after")
                if isinstance(retry_after, int) and not isinstance(retry_after, bool):
                    retry_after = str(retry_after)  # {"retry_after": 3} means "3"
                self.inject(
                    args.get("endpoint", "any"),
                    args.get("fault", ""),
                    args.get("times", 1),
                    retry_after=retry_after,
                    delay_s=args.get("delay_s", 0.0) or 0.0,
                )
            elif path.rstrip("/") == "/_standin/credits":
                self.set_credits(args.get("credits"))  # type: ignore[arg-type]  # validated inside
            elif path.rstrip("/") == "/_standin/callback-mode":
                self.set_callback_mode(args.get("mode", "send"), args.get("delay_s", 0.0) or 0.0)
            else:
                count = args.get("count")
                if count is None:
                    self.set_rate_limit(None)
                else:
                    self.set_rate_limit((count, args.get("per_seconds", 10.0)))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            return _json_answer(400, {"ok": False, "error": str(exc)})
        return _json_answer(200, {"ok": True})


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, lets the stand-in answer it, writes the answer."""

    # HTTP/1.1 keeps connections alive like the real API behind its proxy.
    protocol_version = "HTTP/1.1"
    server_version = "KieStandin/1.0"
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 30
    # Headers and body leave in one segment (buffered writer, flushed after
    # each request) without Nagle: otherwise delayed ACKs add ~40 ms a call.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines: tests and benchmarks want quiet."""

    def do_GET(self) -> None:  # the names http.server dispatches to
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        """Read the body (always, so a kept-alive connection stays in step), answer."""
        server = self.server
        assert isinstance(server, _Server)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, "bad Content-Length")
            return
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            # Kie's clients send Content-Length; rather than decode chunks,
            # drop the connection after answering so the stream stays sane.
            self.close_connection = True
            length = 0
        oversize = length > MAX_BODY_BYTES
        body = b""
        if oversize:
            self._discard(length)
        elif length > 0:
            body = self.rfile.read(length)
        try:
            answer = server.standin._handle(method, self.path, self.headers, body, oversize)
        except Exception:  # a stand-in bug must still answer something
            import traceback

            traceback.print_exc()
            answer = _Answer(500, b'{"code": 500, "msg": "stand-in error", "data": null}')
        self._write(answer)

    def _discard(self, length: int) -> None:
        """Skip an oversized body so the client gets its 413 rather than a reset."""
        if length > _DISCARD_MAX_BYTES:
            # Too much to read; the unread rest would be taken for the next
            # request, so this connection ends with the answer.
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    def _write(self, answer: _Answer) -> None:
        """Send ``answer``, or reset the connection when it says so."""
        if answer.reset:
            self.close_connection = True
            # Linger 0: close() sends RST instead of FIN, like a crashed proxy.
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.connection.close()
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)


class _Server(ThreadingHTTPServer):
    """Threaded HTTP server bound to loopback, quiet about clients hanging up."""

    daemon_threads = True  # do not block stop() on idle keep-alive connections
    # Benchmarks open many connections at once; the default backlog of 5
    # would make the kernel drop SYNs and add whole seconds of retry.
    request_queue_size = 128

    def __init__(self, host: str, port: int, standin: KieStandin) -> None:
        self.standin = standin
        bind_host = "127.0.0.1" if host == "localhost" else host
        if ":" in bind_host:
            self.address_family = socket.AF_INET6
        super().__init__((bind_host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup
        # that could leave the machine; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away; nothing to report
        super().handle_error(request, client_address)


# -- command line ---------------------------------------------------------------


def _parse_rate_limit(text: str) -> tuple[int, float] | None:
    """``"20/10s"`` or ``"20/10"`` -> (20, 10.0); ``"none"`` -> None."""
    if text.strip().lower() in ("none", "off", "unlimited"):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*", text)
    if match is None or float(match.group(2)) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected COUNT/SECONDS like '20/10s' or 'none', got {text!r}"
        )
    return int(match.group(1)), float(match.group(2))


def main(argv: list[str] | None = None) -> int:
    """Run a stand-in from the command line until SIGINT or SIGTERM.

    Prints the base URL (one line, flushed) once it is listening, so scripts
    can read it. Options: ``--host`` (default 127.0.0.1), ``--port`` (default
    0 = free port), ``--key`` (repeatable; default standin-key),
    ``--rate-limit`` (``COUNT/SECONDS`` such as ``20/10s``, or ``none``;
    default 20/10s), ``--cover-seconds`` (default 0.5), ``--credits``
    (default 1000), ``--cost-per-cover`` (default 1), ``--hmac-key`` (sign
    callbacks), ``--codes-in-body-only``.

    Returns:
        The process exit status: 0 after a clean stop, 2 on bad options.
    """
    defaults = StandinConfig()
    parser = argparse.ArgumentParser(
        prog="python -m standin", description="Loopback stand-in for Kie's Suno cover API."
    )
    parser.add_argument(
        "--host", default=defaults.host, help="loopback address (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=defaults.port, help="TCP port; 0 = any free (default)"
    )
    parser.add_argument("--key", action="append", dest="keys", help="accepted API key (repeatable)")
    parser.add_argument(
        "--rate-limit",
        type=_parse_rate_limit,
        default=defaults.rate_limit,
        help="COUNT/SECONDS accepted generations per key, or 'none' (default 20/10s)",
    )
    parser.add_argument("--cover-seconds", type=float, default=defaults.cover_seconds)
    parser.add_argument("--credits", type=float, default=defaults.credits)
    parser.add_argument("--cost-per-cover", type=float, default=defaults.cost_per_cover)
    parser.add_argument(
        "--hmac-key", default=None, help="sign callbacks with this webhook HMAC key"
    )
    parser.add_argument(
        "--codes-in-body-only",
        action="store_true",
        help="answer errors with HTTP 200 and the code only in the body",
    )
    args = parser.parse_args(argv)

    config = StandinConfig(
        host=args.host,
        port=args.port,
        api_keys=tuple(args.keys) if args.keys else defaults.api_keys,
        rate_limit=args.rate_limit,
        cover_seconds=args.cover_seconds,
        credits=args.credits,
        cost_per_cover=args.cost_per_cover,
        webhook_hmac_key=args.hmac_key,
        codes_in_body_only=args.codes_in_body_only,
    )
    try:
        standin = KieStandin(config).start()
    except (ValueError, OSError) as exc:
        print(f"standin: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Signal handlers can only be installed from the main thread; elsewhere
    # (e.g. main() called from a test thread) the caller stops the process.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, Any] = {}
    if in_main_thread:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        print(standin.base_url, flush=True)
        # Wake regularly so the signal handler gets to run promptly.
        while not stop.wait(0.25):
            pass
    finally:
        standin.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
