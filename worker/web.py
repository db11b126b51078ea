"""The callback endpoint: a small WSGI app Kie POSTs finished covers to.

Routes:
    POST /kie/callback?job=<job id>&token=<token>
                         Kie's cover callback: the URL we handed to Kie for that job
                         (`kie_covers.core.signing.callback_token`); also signed when
                         KIE_WEBHOOK_HMAC_KEY is set
    GET  /healthz        200 when Redis answers
    /v1/...              the producer API (`kie_covers.worker.http_api`)
    /console...          the operations console (`kie_covers.worker.console`)

Run it under waitress with ``covers web`` (the Procfile's ``web`` line).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kie_covers.config import Settings, get_settings
from kie_covers.core import errors
from kie_covers.core.signing import JOB_PARAM, TOKEN_PARAM, signature_matches
from kie_covers.runtime.app import app
from kie_covers.runtime.callback_health import CALLBACK_PATH, HEALTH_PATH
from kie_covers.runtime.callback_secret import CallbackSecrets, callback_secrets
from kie_covers.runtime.connections import get_store
from kie_covers.services.callbacks import CallbackResult, apply_callback
from kie_covers.services.overview import cluster_overview
from kie_covers.store.jobs import JobStore
from kie_covers.worker.console import CONSOLE_PREFIX, Console
from kie_covers.worker.http_api import API_PREFIX, ProducerApi
from kie_covers.worker.http_body import Refused, declared_length, decode_json, read_body

log = logging.getLogger("covers.web")

#: Bytes a chunked body may exceed COVERS_MAX_CALLBACK_BYTES by on the wire before
#: waitress stops reading it (waitress counts the chunks' framing too); the body itself
#: is then held to the cap here.
CHUNK_SLACK = 4096
#: Largest request head (request line and headers) waitress reads, in bytes.
MAX_HEADER_BYTES = 16384
#: Most query parameters parsed from a callback's URL.
MAX_QUERY_FIELDS = 10
#: Longest job id accepted in a callback's URL (ours are 36-character UUIDs).
MAX_JOB_ID_CHARS = 200

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class CallbackApp:
    """The WSGI application.

    A callback is checked in this order, each check before anything costlier: its
    ``Content-Length`` (413 over COVERS_MAX_CALLBACK_BYTES, body unread), the job id
    and token in its URL (401; no job key in Redis is read), its body (at most the cap
    read; 413 over it), the body's JSON (400 when not UTF-8 JSON or nested deeper than
    COVERS_MAX_JSON_DEPTH), Kie's signature when KIE_WEBHOOK_HMAC_KEY is set (401).
    Then it ends only the job its URL names (409 if the cover is another job's; 503 if
    it would be kept as an early callback but COVERS_EARLY_CALLBACK_BYTES are kept).

    Args:
        settings: the settings (HMAC key, max age, caps).
        store: a function returning the job store (called per request; lazily connects).
        secrets: a function returning the callback-token secrets (default: this
            process's, `callback_secrets`).
        api: the producer API, answering every path under /v1/ (default None: not
            served).
        console: the operations console, answering /console and every path under it
            (default None: not served).
    """

    def __init__(self, settings: Settings, store: Callable[[], JobStore],
                 secrets: Callable[[], CallbackSecrets] = callback_secrets,
                 api: ProducerApi | None = None, console: Console | None = None) -> None:
        self.settings = settings
        self.store = store
        self.secrets = secrets
        self.api = api
        self.console = console

    def waitress_options(self) -> dict[str, Any]:
        """Keyword arguments for ``waitress.serve`` that bound what one client can make
        the server hold: bodies (the larger of COVERS_MAX_CALLBACK_BYTES and
        COVERS_MAX_API_BYTES, plus `CHUNK_SLACK` for the
        framing of chunked bodies; waitress stops reading there and answers 413),
        headers (`MAX_HEADER_BYTES`), connections (COVERS_WEB_CONNECTION_LIMIT) and how
        long an idle or stalled connection stays open (COVERS_WEB_CHANNEL_TIMEOUT,
        rounded up to whole seconds; checked every third of that)."""
        timeout = max(1, math.ceil(self.settings.web_channel_timeout))
        return {
            "max_request_body_size": max(self.settings.max_callback_bytes,
                                         self.settings.max_api_bytes) + CHUNK_SLACK,
            "max_request_header_size": MAX_HEADER_BYTES,
            "connection_limit": self.settings.web_connection_limit,
            "channel_timeout": timeout,
            # Waitress closes timed-out connections only when it looks (every
            # cleanup_interval s, 30 by default): look often enough to honour the timeout.
            "cleanup_interval": max(1, math.ceil(timeout / 3)),
            # Keep Forwarded / X-Forwarded-For in the environ (waitress 3 drops them by
            # default): without COVERS_API_TOKEN the producer API refuses a request a
            # proxy forwarded, even from loopback (`http_api.local_client`).
            "clear_untrusted_proxy_headers": False,
        }

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if self.api is not None and path.startswith(API_PREFIX):
            return self.api(environ, start_response)
        if self.console is not None and (path == CONSOLE_PREFIX
                                         or path.startswith(CONSOLE_PREFIX + "/")):
            return self.console(environ, start_response)
        try:
            if path == HEALTH_PATH and method in ("GET", "HEAD"):
                # Never reads a body: a slow or huge upload cannot hold /healthz up.
                self.store().redis.ping()
                return self._answer(start_response, "200 OK", {"ok": True})
            if path != CALLBACK_PATH:
                raise Refused("404 Not Found", "no such path")
            if method != "POST":
                raise Refused("405 Method Not Allowed", "POST only")
            result = self._callback(environ)
            if result is CallbackResult.MISMATCH:
                raise Refused("409 Conflict",
                              "this cover does not belong to the job named in the URL")
            if result is CallbackResult.FULL:
                raise Refused("503 Service Unavailable",
                              "too many callbacks for unknown covers are kept; send again "
                              "later")
            return self._answer(start_response, "200 OK", {"status": result.value})
        except Refused as refused:
            log.info("callback refused: %s %s", refused.status, refused.message)
            payload: dict[str, Any] = {"error": refused.message}
            if refused.fields:
                payload["fields"] = refused.fields
            headers = [("Allow", "POST")] if refused.status.startswith("405") else []
            return self._answer(start_response, refused.status, payload, headers)
        except errors.InvalidPayload as bad:
            log.info("callback refused: %s", bad.message)
            return self._answer(start_response, "400 Bad Request",
                                {"error": bad.message, "fields": bad.fields})
        except Exception:
            log.exception("callback handling failed")
            return self._answer(start_response, "503 Service Unavailable",
                                {"error": "temporarily unavailable, send again"})

    def _callback(self, environ: Environ) -> CallbackResult:
        cap = self.settings.max_callback_bytes
        length = declared_length(environ, cap)
        job_id = self._authorize(environ)
        body = read_body(environ, length, cap)
        document = decode_json(body, self.settings.max_json_depth)
        self._verify(environ, document)
        return apply_callback(self.store(), document, self.settings.kie_poll_timeout,
                              job_id=job_id,
                              early_cap_bytes=self.settings.early_callback_bytes)

    def _authorize(self, environ: Environ) -> str:
        """The job id the callback's URL names, if its token is that job's (401
        otherwise). Reads no job key: only, when the token does not match, the shared
        secret, in case another process has just written a new one."""
        try:
            query: dict[str, list[str]] = parse_qs(str(environ.get("QUERY_STRING", "")),
                                                   max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            raise Refused("401 Unauthorized", "missing job or token in the URL") from None
        jobs = query.get(JOB_PARAM, [])
        tokens = query.get(TOKEN_PARAM, [])
        if len(jobs) != 1 or len(tokens) != 1 or not jobs[0] or not tokens[0]:
            raise Refused("401 Unauthorized", "missing job or token in the URL")
        job_id, token = jobs[0], tokens[0]
        if len(job_id) > MAX_JOB_ID_CHARS or not self.secrets().matches(job_id, token):
            raise Refused("401 Unauthorized", "bad token for this job")
        return job_id

    def _verify(self, environ: Environ, document: Any) -> None:
        key = self.settings.kie_webhook_hmac_key
        if key is None:
            return
        timestamp = environ.get("HTTP_X_WEBHOOK_TIMESTAMP", "")
        given = environ.get("HTTP_X_WEBHOOK_SIGNATURE", "")
        if not timestamp or not given:
            raise Refused("401 Unauthorized", "missing X-Webhook-Timestamp or X-Webhook-Signature")
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise Refused("401 Unauthorized", "X-Webhook-Timestamp is not unix seconds") from None
        if abs(time.time() - sent_at) > self.settings.kie_webhook_max_age:
            raise Refused("401 Unauthorized", "X-Webhook-Timestamp too old (replay?)")
        data = document.get("data") if isinstance(document, dict) else None
        # In a callback, Kie's data.taskId is the cover task id (not the music task's).
        cover_task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(cover_task_id, str):
            raise Refused("400 Bad Request", "data.taskId is missing",
                          {"data.taskId": ["Missing data for required field."]})
        if not signature_matches(key, cover_task_id, timestamp, given):
            raise Refused("401 Unauthorized", "bad X-Webhook-Signature")

    @staticmethod
    def _answer(start_response: StartResponse, status: str, payload: dict[str, Any],
                headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        body = json.dumps(payload).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body))), *(headers or [])])
        return [body]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def callback_port_mismatch(callback_url: str | None, port: int) -> str | None:
    """Why COVERS_CALLBACK_URL cannot reach this endpoint on `port`, or None.

    Only a loopback callback URL (this machine, no proxy in between) is judged: its
    port (80/443 when it names none) must be `port`. A public URL reaches us through
    a proxy whose port mapping is not ours to know.
    """
    if not callback_url:
        return None
    parts = urlsplit(callback_url)
    try:
        named = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not _is_loopback(parts.hostname or "") or named == port:
        return None
    return (f"COVERS_CALLBACK_URL names port {named} on this machine, but covers web "
            f"listens on {port}: Kie's callbacks will not arrive (set COVERS_WEB_PORT, or "
            f"the port in COVERS_CALLBACK_URL, so that they agree)")


def warn_if_callback_url_misses(callback_url: str | None, port: int) -> None:
    """Log one warning when `callback_port_mismatch` finds one."""
    reason = callback_port_mismatch(callback_url, port)
    if reason:
        log.warning("%s", reason)


def make_app() -> CallbackApp:
    """The endpoint with the process's settings and job store."""
    # Connect before the first callback: otherwise the first few callbacks wait
    # while Redis, the result backend and the broker producer are set up.
    get_store().redis.ping()
    callback_secrets()  # reads (or makes) the shared secret once, before any callback
    _ = app.backend
    with app.producer_or_acquire():
        pass
    settings = get_settings()
    return CallbackApp(settings, get_store, api=ProducerApi(settings),
                       console=Console(settings, lambda: cluster_overview().to_dict()))
