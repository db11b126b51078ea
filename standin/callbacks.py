"""Completion callbacks: announcing a finished cover to its ``callBackUrl``, as Kie does.

Only plain-http loopback receivers are ever contacted: the stand-in must never
reach off this machine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Callable
from email.message import Message
from typing import IO, Any
from urllib.parse import urlsplit

from .config import StandinConfig
from .covers import REFUNDING_CALLBACK_CODE, callback_payload
from .state import StandinState
from .style import StyleDefaults

#: Kie gives callback receivers 15 seconds; so does the stand-in.
CALLBACK_TIMEOUT_S = 15.0
#: Hosts a callback may be sent to: this machine only, never the network.
_LOOPBACK_CALLBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback_callback(url: str) -> bool:
    """True when ``url`` is plain http to this machine; only those are contacted."""
    try:
        parts = urlsplit(url)
        return parts.scheme == "http" and parts.hostname in _LOOPBACK_CALLBACK_HOSTS
    except ValueError:
        return False


def webhook_signature(key: str, task_id: str, timestamp: str) -> str:
    """Kie's webhook signature: base64(HMAC-SHA256(key, f"{taskId}.{timestamp}")).

    ``timestamp`` is the ``X-Webhook-Timestamp`` value, whole seconds since
    the epoch as text.
    """
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


class CallbackSender:
    """Announces finished covers according to the callback mode each was accepted with."""

    def __init__(
        self,
        config: StandinConfig,
        state: StandinState,
        base_url: Callable[[], str],
        styles: StyleDefaults,
    ) -> None:
        """Send for ``state``'s covers.

        Args:
            config: its ``webhook_hmac_key`` signs callbacks (None = unsigned).
            state: where covers, epochs and the callback count live.
            base_url: gives the stand-in's base URL, for the picture URLs.
            styles: the default style when a cover ends shapes its callback.
        """
        self._config = config
        self._state = state
        self._base_url = base_url
        self._styles = styles

    def cover_done(self, cover_id: str, epoch: int) -> None:
        """Scheduler pool: the cover just finished; announce it per its callback mode.

        A cover failing with code 531 gets its credits back (Kie's docs:
        "Your credits have been refunded"). Nothing is sent when the
        stand-in was reset or stopped since ``epoch``, for mode ``"drop"``,
        or when the callback URL is not loopback. For ``"delay"`` the
        scheduler already called this the extra seconds late. Blocks while
        the receiver answers.
        """
        cover = self._state.finish_cover(cover_id, epoch)
        if cover is None:
            return
        if cover.failure is not None and cover.failure.callback_code == REFUNDING_CALLBACK_CODE:
            self._state.refund(epoch)
        mode = cover.callback_mode
        payload = callback_payload(cover, self._base_url(), self._styles.get())
        if mode == "drop" or not is_loopback_callback(cover.callback_url):
            return  # never contact anything off this machine
        for _ in range(2 if mode == "duplicate" else 1):
            self._send(cover.callback_url, payload, epoch)

    def _send(self, url: str, payload: dict[str, Any], epoch: int) -> None:
        """POST one callback; the receiver's errors are swallowed like Kie does."""
        if not self._state.is_current(epoch):
            return  # reset or stopped meanwhile
        headers = {"Content-Type": "application/json", "User-Agent": "kie-standin"}
        key = self._config.webhook_hmac_key
        if key is not None:
            timestamp = str(int(time.time()))
            headers["X-Webhook-Timestamp"] = timestamp
            headers["X-Webhook-Signature"] = webhook_signature(
                key, payload["data"]["taskId"], timestamp
            )
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode(), headers=headers, method="POST"
        )
        try:
            with _CALLBACK_OPENER.open(request, timeout=CALLBACK_TIMEOUT_S) as response:
                response.read()
        except Exception:
            pass  # any receiver failure counts as delivered, as on Kie
        self._state.count_callback(epoch)
