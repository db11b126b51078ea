"""The callback endpoint: a small WSGI app Kie POSTs finished covers to.

Routes:
    POST /kie/callback   Kie's cover callback (signed when KIE_WEBHOOK_HMAC_KEY is set)
    GET  /healthz        200 when Redis answers

Run it under waitress with ``covers web`` (the Procfile's ``web`` line).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from kie_covers.config import Settings, get_settings
from kie_covers.core import errors
from kie_covers.core.signing import signature_matches
from kie_covers.runtime.app import app
from kie_covers.runtime.connections import get_store
from kie_covers.services.callbacks import apply_callback
from kie_covers.store.jobs import JobStore

log = logging.getLogger("covers.web")

CALLBACK_PATH = "/kie/callback"
HEALTH_PATH = "/healthz"

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class Refused(errors.KieCoversError):
    """A request the endpoint answers with an error status."""

    def __init__(self, status: str, message: str, fields: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields


class CallbackApp:
    """The WSGI application.

    Args:
        settings: the settings (HMAC key, max age, body cap).
        store: a function returning the job store (called per request; lazily connects).
    """

    def __init__(self, settings: Settings, store: Callable[[], JobStore]) -> None:
        self.settings = settings
        self.store = store

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path == HEALTH_PATH and method in ("GET", "HEAD"):
                self.store().redis.ping()
                return self._answer(start_response, "200 OK", {"ok": True})
            if path != CALLBACK_PATH:
                raise Refused("404 Not Found", "no such path")
            if method != "POST":
                raise Refused("405 Method Not Allowed", "POST only")
            body = self._read_body(environ)
            document = self._decode(body)
            self._verify(environ, document)
            result = apply_callback(self.store(), document, self.settings.kie_poll_timeout)
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

    def _read_body(self, environ: Environ) -> bytes:
        cap = self.settings.max_callback_bytes
        raw_length = environ.get("CONTENT_LENGTH") or ""
        if raw_length:
            try:
                length = int(raw_length)
            except ValueError:
                raise Refused("400 Bad Request", "bad Content-Length") from None
            if length > cap:
                raise Refused("413 Content Too Large", f"body over {cap} bytes")
        stream = environ["wsgi.input"]
        body: bytes = stream.read(cap + 1) if not raw_length else stream.read(int(raw_length))
        if len(body) > cap:
            raise Refused("413 Content Too Large", f"body over {cap} bytes")
        return body

    @staticmethod
    def _decode(body: bytes) -> Any:
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise Refused("400 Bad Request", "body is not UTF-8 JSON") from None

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


def make_app() -> CallbackApp:
    """The endpoint with the process's settings and job store."""
    # Connect before the first callback: otherwise the first few callbacks wait
    # while Redis, the result backend and the broker producer are set up.
    get_store().redis.ping()
    _ = app.backend
    with app.producer_or_acquire():
        pass
    return CallbackApp(get_settings(), get_store)
