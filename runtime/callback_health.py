"""Does COVERS_CALLBACK_URL reach a `covers web`? Each worker asks its ``/healthz``.

A worker whose callback URL goes nowhere still makes every cover, but each one
then ends only at its next poll (every KIE_POLL_INTERVAL seconds, 30 by default)
instead of at Kie's callback, and nothing else says so. `CallbackWatch` checks,
in a daemon thread of the worker's main process (off its start-up path):

- at start-up, every `STARTUP_EVERY_S` seconds for up to `STARTUP_GRACE_S`
  (a Procfile runner may start `covers web` after the worker), then one warning
  if the endpoint never answered;
- then every `RECHECK_S` seconds: a warning when it stops answering, an info line
  when it answers again;
- each result is the gauge ``covers_callback_endpoint_up`` (1 or 0) when metrics
  are on (COVERS_METRICS_PORT).

The check is a GET of `health_url`, straight to the endpoint (no proxy from the
environment), that must answer 2xx within `PROBE_TIMEOUT_S` seconds. The URL is
the operator's own setting, so no address policy applies to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import requests

from kie_covers.config import Settings
from kie_covers.runtime import metrics

log = logging.getLogger("covers.callback_health")

#: Path of the callback route of `covers web` (what COVERS_CALLBACK_URL ends with).
CALLBACK_PATH = "/kie/callback"
#: Path of the health route of `covers web` (200 when it and its Redis answer).
HEALTH_PATH = "/healthz"
#: Seconds a worker keeps asking at start-up before it warns.
STARTUP_GRACE_S = 15.0
#: Seconds between two start-up checks.
STARTUP_EVERY_S = 1.0
#: Seconds between two checks after start-up.
RECHECK_S = 60.0
#: Seconds one check may take in all (connect and answer).
PROBE_TIMEOUT_S = 2.0
#: The gauge's name in `kie_covers.runtime.metrics`.
GAUGE = "callback_endpoint_up"


def health_url(callback_url: str, *, with_credentials: bool = True) -> str:
    """The ``/healthz`` URL beside `callback_url`: its origin plus the path before
    ``/kie/callback`` (a proxy that mounts `covers web` under ``/covers`` keeps that
    prefix); query and fragment are dropped. Without `with_credentials`, any
    ``user:password@`` is dropped too (for logs)."""
    parts = urlsplit(callback_url)
    path = parts.path.rstrip("/")
    prefix = path.removesuffix(CALLBACK_PATH) if path.endswith(CALLBACK_PATH) else ""
    netloc = parts.netloc if with_credentials else parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, prefix + HEALTH_PATH, "", ""))


def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """GET `url` once; None when it answers 2xx within `timeout_s` seconds (default
    2), else the reason, a short text without the URL."""
    try:
        with requests.Session() as session:
            session.trust_env = False  # straight to the endpoint, never via a proxy
            answer = session.get(url, timeout=timeout_s, allow_redirects=False)
    except requests.Timeout:
        return f"no answer within {timeout_s:g} s"
    except requests.ConnectionError:
        return "cannot connect"
    except requests.RequestException as exc:
        return type(exc).__name__
    if 200 <= answer.status_code < 300:
        return None
    return f"answered HTTP {answer.status_code}"


def _report_gauge(up: bool) -> None:
    metrics.set_gauge(GAUGE, 1.0 if up else 0.0)


class CallbackWatch:
    """Checks that a callback URL's ``/healthz`` answers, and says so when it does not.

    Args:
        callback_url: COVERS_CALLBACK_URL.
        poll_interval_s: KIE_POLL_INTERVAL, for the warning (how late covers end).
        grace_s, every_s: start-up: ask every `every_s` seconds for `grace_s` seconds
            (defaults `STARTUP_EVERY_S`, `STARTUP_GRACE_S`).
        recheck_s: seconds between later checks (default `RECHECK_S`).
        timeout_s: seconds one check may take (default `PROBE_TIMEOUT_S`).
        report: called with each result (default: the gauge, when metrics are on).
    """

    def __init__(self, callback_url: str, poll_interval_s: float, *,
                 grace_s: float = STARTUP_GRACE_S, every_s: float = STARTUP_EVERY_S,
                 recheck_s: float = RECHECK_S, timeout_s: float = PROBE_TIMEOUT_S,
                 report: Callable[[bool], None] = _report_gauge) -> None:
        self.url = health_url(callback_url)
        self.display = health_url(callback_url, with_credentials=False)
        self.poll_interval_s = poll_interval_s
        self.grace_s, self.every_s, self.recheck_s = grace_s, every_s, recheck_s
        self.timeout_s = timeout_s
        self.report = report
        #: The newest result: True up, False down, None not checked yet.
        self.up: bool | None = None
        self._stop = threading.Event()

    def check_at_start(self) -> bool:
        """Ask until the endpoint answers or the grace period is over; log the
        outcome once (a warning when it never answered). Returns whether it is up."""
        deadline = time.monotonic() + self.grace_s
        reason = probe(self.url, self.timeout_s)
        while reason is not None and time.monotonic() < deadline:
            if self._stop.wait(self.every_s):
                return False
            reason = probe(self.url, self.timeout_s)
        if reason is None:
            log.info("COVERS_CALLBACK_URL answers (GET %s): covers end at Kie's callback",
                     self.display)
        else:
            log.warning(
                "COVERS_CALLBACK_URL does not answer: GET %s: %s (for %g s). Kie's callbacks "
                "will not arrive, so each cover ends only at its next poll (every %g s). Is "
                "`covers web` running on the port that COVERS_CALLBACK_URL names "
                "(COVERS_WEB_PORT)?", self.display, reason, self.grace_s,
                self.poll_interval_s)
        self._record(reason is None)
        return reason is None

    def check_again(self) -> bool:
        """One later check; logs only a change (warning when down, info when up again)."""
        reason = probe(self.url, self.timeout_s)
        if reason is not None and self.up is not False:
            log.warning("COVERS_CALLBACK_URL stopped answering: GET %s: %s; covers end by "
                        "polling until it answers", self.display, reason)
        elif reason is None and self.up is False:
            log.info("COVERS_CALLBACK_URL answers again (GET %s)", self.display)
        self._record(reason is None)
        return reason is None

    def _record(self, up: bool) -> None:
        self.up = up
        try:
            self.report(up)
        except Exception:  # a metric must never stop the watch
            log.debug("callback endpoint gauge not recorded", exc_info=True)

    def run(self) -> None:
        """The start-up check, then a check every `recheck_s` seconds until `stop`."""
        self.check_at_start()
        while not self._stop.wait(self.recheck_s):
            self.check_again()

    def start(self) -> threading.Thread:
        """Run the watch in a daemon thread (it never holds a worker's exit up)."""
        thread = threading.Thread(target=self.run, name="covers-callback-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """End the watch at its next wait."""
        self._stop.set()


def start_callback_watch(settings: Settings) -> CallbackWatch | None:
    """Start watching COVERS_CALLBACK_URL in the background; None when it is unset."""
    if not settings.callback_url:
        return None
    watch = CallbackWatch(settings.callback_url, settings.kie_poll_interval)
    watch.start()
    return watch
