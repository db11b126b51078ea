"""The operations console: a web page and its JSON, mounted in ``covers web`` at /console.

Pages (one HTML file, `console_static/index.html`; its script reads the JSON below
every `REFRESH_S` seconds and draws it; no build step, nothing from elsewhere):

    GET  /console                 the cluster: counts, waiting, limiter, failures
    GET  /console/jobs/{jobId}    one job: record, timeline, error, images, notice
    GET  /console/login           the login form (COVERS_CONSOLE_TOKEN set)
    POST /console/login           token=... -> session cookie, back to /console
    POST /console/logout          ends the session (CSRF checked)
    GET  /console/static/{name}   console.css, console.js

JSON (``application/json``; errors ``application/problem+json``):

    GET  /console/api/overview                 cluster counts (`cluster_overview`)
    GET  /console/api/failures?kind=&code=&since=&until=&limit=&offset=
    GET  /console/api/jobs/{jobId}             {record, timeline, notice}
    GET  /console/api/search?q=                {jobId} for a job id or music task id
    POST /console/api/retry   {jobIds: [...]} | {allRetryable: true, kind?, code?}
    POST /console/api/forget  {jobIds: [...]}

Who may use it, and the CSRF proof every POST carries: `kie_covers.worker.console_auth`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from kie_covers.config import Settings
from kie_covers.core.errors import KINDS
from kie_covers.core.failure_filter import FailureFilter, parse_failure_filter
from kie_covers.core.problems import PROBLEM_MEDIA_TYPE, FieldError
from kie_covers.core.schemas import job_id_problem
from kie_covers.core.states import JobState
from kie_covers.runtime.connections import get_store
from kie_covers.services.failures import (
    count_failures,
    forget_jobs,
    list_failures,
    retry_jobs,
    retry_where,
)
from kie_covers.worker import console_auth as auth
from kie_covers.worker.http_api import Problem, job_record, path_segments
from kie_covers.worker.http_body import (
    Refused,
    declared_length,
    decode_json,
    read_body,
    status_line,
)

log = logging.getLogger("covers.console")

#: Every console path starts with this.
CONSOLE_PREFIX = "/console"
#: Seconds between the page's reads of its JSON.
REFRESH_S = 2
#: Largest body of a console POST, in bytes (a login form, or a list of job ids).
MAX_BODY_BYTES = 65536
#: Most job ids one retry or forget may name.
MAX_JOB_IDS = 1000
#: The most failures one page of the console lists.
MAX_LIMIT = 500
#: Most query parameters parsed from a URL.
MAX_QUERY_FIELDS = 10
#: The static files served, by name, with their content types.
STATIC = {"console.css": "text/css; charset=utf-8",
          "console.js": "text/javascript; charset=utf-8",
          "index.html": "text/html; charset=utf-8",
          "login.html": "text/html; charset=utf-8"}
#: The static files served under /console/static/ (the pages have routes of their own).
ASSETS = frozenset({"console.css", "console.js"})

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
Answer = tuple[int, dict[str, Any]]
Overview = Callable[[], Mapping[str, Any]]


@functools.cache
def static_file(name: str) -> bytes:
    """A file of ``worker/console_static`` (package data), read once per process."""
    return (resources.files("kie_covers.worker") / "console_static" / name).read_bytes()


class Console:
    """The WSGI application for paths under `CONSOLE_PREFIX`.

    Args:
        settings: the settings (console token, image policy).
        overview: returns the cluster's counts, JSON-ready (`cluster_overview`).
    """

    def __init__(self, settings: Settings, overview: Overview) -> None:
        self.settings = settings
        self.overview_source = overview

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        segments = path_segments(environ)[1:]  # after "console"
        if segments[:1] == ["api"]:
            return self._api(environ, start_response, method, segments[1:])
        return self._page(environ, start_response, method, segments)

    # --- pages ----------------------------------------------------------------------

    def _page(self, environ: Environ, start_response: StartResponse, method: str,
              segments: list[str]) -> Iterable[bytes]:
        allowed = auth.access(self.settings, environ)
        if allowed == "forbidden":
            return self._text(start_response, 403, "The console answers only this host "
                              "(loopback, not forwarded) unless COVERS_CONSOLE_TOKEN is set.")
        route = segments[0] if segments else ""
        if route == "static" and len(segments) == 2 and segments[1] in ASSETS:
            return self._file(start_response, segments[1], environ)
        if route == "login":
            return self._login(environ, start_response, method)
        if allowed == "login":
            return self._redirect(start_response, CONSOLE_PREFIX + "/login")
        if route == "logout" and method == "POST":
            if not auth.csrf_ok(environ):
                return self._text(start_response, 403, "missing or wrong CSRF token")
            expired = auth.cookie_header(auth.SESSION_COOKIE, "", environ, http_only=True,
                                         max_age=0)
            return self._redirect(start_response, CONSOLE_PREFIX + "/login", [expired])
        page = (segments in ([], [""])) or (route == "jobs" and len(segments) == 2)
        if not page:
            return self._text(start_response, 404, "no such page")
        if method not in ("GET", "HEAD"):
            return self._text(start_response, 405, "GET only", [("Allow", "GET, HEAD")])
        return self._file(start_response, "index.html", environ)

    def _login(self, environ: Environ, start_response: StartResponse, method: str
               ) -> Iterable[bytes]:
        if self.settings.console_token is None:
            return self._redirect(start_response, CONSOLE_PREFIX)
        if method != "POST":
            return self._file(start_response, "login.html", environ)
        if not auth.origin_ok(environ):
            return self._text(start_response, 403, "login from another site refused")
        try:
            body = read_body(environ, declared_length(environ, MAX_BODY_BYTES), MAX_BODY_BYTES)
        except Refused as refused:
            return self._text(start_response, refused.code, refused.message)
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=MAX_QUERY_FIELDS)
        given = (form.get("token") or [""])[0]
        if not auth.token_matches(self.settings, given):
            log.info("console login refused (wrong token)")  # the token given: never
            return self._redirect(start_response, CONSOLE_PREFIX + "/login?failed=1")
        session = auth.cookie_header(auth.SESSION_COOKIE, auth.new_session(self.settings),
                                     environ, http_only=True, max_age=auth.SESSION_S)
        return self._redirect(start_response, CONSOLE_PREFIX, [session])

    # --- JSON -------------------------------------------------------------------------

    def _api(self, environ: Environ, start_response: StartResponse, method: str,
             segments: list[str]) -> Iterable[bytes]:
        try:
            allowed = auth.access(self.settings, environ)
            if allowed == "forbidden":
                raise Problem(403, "forbidden", "without COVERS_CONSOLE_TOKEN the console "
                              "answers only clients on this host (loopback, not forwarded)")
            if allowed == "login":
                raise Problem(401, "unauthorized", "log in at /console/login")
            handler, argument = _route(method, segments)
            if method == "POST" and not auth.csrf_ok(environ):
                raise Problem(403, "forbidden", "missing or wrong CSRF token (X-CSRF-Token "
                              "must match the covers_csrf cookie) or a foreign Origin")
            status, payload = getattr(self, handler)(environ, *argument)
        except Problem as refused:
            log.info("console %s %s refused: %d %s", method, "/".join(segments)[:100],
                     refused.status, refused.detail)
            return self._json(start_response, refused.status, refused.document(),
                              PROBLEM_MEDIA_TYPE, refused.headers)
        except Exception:
            log.exception("console %s %s failed", method, "/".join(segments)[:100])
            answer = Problem(503, "unavailable", "temporarily unavailable; try again")
            return self._json(start_response, 503, answer.document(), PROBLEM_MEDIA_TYPE)
        return self._json(start_response, status, payload)

    def overview(self, environ: Environ) -> Answer:
        """GET /console/api/overview: the cluster's counts, and what the page needs."""
        return 200, {"overview": dict(self.overview_source()), "now": time.time(),
                     "refreshSeconds": REFRESH_S, "kinds": sorted(KINDS),
                     "login": self.settings.console_token is not None}

    def failures(self, environ: Environ) -> Answer:
        """GET /console/api/failures: failed jobs, newest first, filtered."""
        which = _failure_filter(_query(environ))
        rows = list_failures(which.kind, which.code, limit=which.limit, offset=which.offset,
                             since=which.since, until=which.until)
        return 200, {"failures": [_shown(row) for row in rows],
                     "total": count_failures(which.kind, which.code, since=which.since,
                                             until=which.until),
                     "limit": which.limit, "offset": which.offset}

    def job(self, environ: Environ, job_id: str) -> Answer:
        """GET /console/api/jobs/{jobId}: the record, its timeline and notice status."""
        record = job_record(job_id)
        return 200, {"record": _shown(record),
                     "timeline": get_store().history.read(job_id),
                     "notice": self._notice(record)}

    def search(self, environ: Environ) -> Answer:
        """GET /console/api/search?q=: the job a job id or music task id names."""
        text = _query(environ).get("q", "").strip()
        store = get_store()
        if text and job_id_problem(text) is None and store.get(text) is not None:
            return 200, {"jobId": text, "matched": "job"}
        owner = store.owner_of(text) if text and len(text) <= 256 else None
        if owner is not None:
            return 200, {"jobId": owner, "matched": "music_task"}
        raise Problem(404, "not-found", "no job with that job id or music task id")

    def retry(self, environ: Environ) -> Answer:
        """POST /console/api/retry: retry jobs by id, or every retryable failure."""
        body = self._body(environ)
        if body.get("allRetryable") is True:
            which = _failure_filter({k: str(v) for k, v in body.items()
                                     if k in ("kind", "code") and v})
            outcomes = retry_where(which.kind, which.code, retryable_only=True, by="console")
        else:
            outcomes = retry_jobs(_job_ids(body), by="console")
        results = [{"jobId": o.job_id, "result": o.result} for o in outcomes]
        return 200, {"queued": sum(o.result == "ok" for o in outcomes), "results": results}

    def forget(self, environ: Environ) -> Answer:
        """POST /console/api/forget: delete failed jobs' records."""
        return 200, {"forgotten": forget_jobs(_job_ids(self._body(environ)))}

    def _notice(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Where the app's notice of the job's outcome stands."""
        if record.get("notified_at"):
            return {"status": "delivered", "at": record["notified_at"]}
        if record.get("notice_error"):
            return {"status": "gave_up", "reason": record["notice_error"]}
        if not self.settings.callback_url:
            return {"status": "off", "reason": "Kie calls the app itself (no "
                    "COVERS_CALLBACK_URL)"}
        if not JobState(record["state"]).final:
            return {"status": "not_yet", "reason": "sent when the job ends"}
        return {"status": "pending", "reason": "being delivered or tried again"}

    def _body(self, environ: Environ) -> dict[str, Any]:
        try:
            raw = read_body(environ, declared_length(environ, MAX_BODY_BYTES), MAX_BODY_BYTES)
            body = decode_json(raw, 4)
        except Refused as refused:
            raise Problem(refused.code, "too-large" if refused.code == 413 else "bad-request",
                          refused.message) from None
        if not isinstance(body, dict):
            raise Problem(422, "validation", "the body must be a JSON object",
                          [FieldError("", "type", "must be an object")])
        return body

    # --- answers ----------------------------------------------------------------------

    def _headers(self, content_type: str, length: int) -> list[tuple[str, str]]:
        return [("Content-Type", content_type), ("Content-Length", str(length)),
                *auth.security_headers(self.settings)]

    def _file(self, start_response: StartResponse, name: str, environ: Environ
              ) -> list[bytes]:
        body = static_file(name)
        headers = self._headers(STATIC[name], len(body))
        if name.endswith(".html") and not auth.cookies(environ).get(auth.CSRF_COOKIE):
            headers.append(auth.cookie_header(auth.CSRF_COOKIE, auth.new_csrf(), environ,
                                              http_only=False))
        start_response("200 OK", headers)
        return [body]

    def _json(self, start_response: StartResponse, status: int, payload: Mapping[str, Any],
              content_type: str = "application/json",
              extra: Sequence[tuple[str, str]] = ()) -> list[bytes]:
        body = json.dumps(payload).encode()
        start_response(status_line(status), [*self._headers(content_type, len(body)), *extra])
        return [body]

    def _text(self, start_response: StartResponse, status: int, text: str,
              extra: Sequence[tuple[str, str]] = ()) -> list[bytes]:
        body = (text + "\n").encode()
        start_response(status_line(status),
                       [*self._headers("text/plain; charset=utf-8", len(body)), *extra])
        return [body]

    def _redirect(self, start_response: StartResponse, location: str,
                  extra: Sequence[tuple[str, str]] = ()) -> list[bytes]:
        start_response("303 See Other", [*self._headers("text/plain; charset=utf-8", 0),
                                         ("Location", location), *extra])
        return [b""]


#: (method, path after /console/api, handler); ``None`` is the job id.
ROUTES: tuple[tuple[str, tuple[str | None, ...], str], ...] = (
    ("GET", ("overview",), "overview"),
    ("GET", ("failures",), "failures"),
    ("GET", ("jobs", None), "job"),
    ("GET", ("search",), "search"),
    ("POST", ("retry",), "retry"),
    ("POST", ("forget",), "forget"),
)


def _route(method: str, segments: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(handler name, its arguments) for the request, or a 404/405 problem."""
    allowed: list[str] = []
    for route_method, route, handler in ROUTES:
        if len(route) != len(segments) or any(
                part is not None and part != segment
                for part, segment in zip(route, segments, strict=True)):
            continue
        if route_method == method or (route_method == "GET" and method == "HEAD"):
            return handler, tuple(s for p, s in zip(route, segments, strict=True) if p is None)
        allowed.append(route_method)
    if allowed:
        raise Problem(405, "method-not-allowed", f"{method} is not allowed here",
                      headers=[("Allow", ", ".join(sorted(set(allowed))))])
    raise Problem(404, "not-found", "no such path")


def _query(environ: Environ) -> dict[str, str]:
    try:
        query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=False,
                         max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise Problem(400, "bad-request", "too many query parameters") from None
    return {name: values[0] for name, values in query.items()}


def _failure_filter(query: Mapping[str, str]) -> FailureFilter:
    """The failures filter of `query` (the console's page, or a body's kind and code);
    422 naming each bad parameter. Others are ignored (the page may add its own)."""
    which, errors = parse_failure_filter(query, max_limit=MAX_LIMIT, refuse_unknown=False)
    if errors:
        raise Problem(422, "validation", "bad failures filter", errors)
    return which


def _job_ids(body: Mapping[str, Any]) -> list[str]:
    ids = body.get("jobIds")
    if (not isinstance(ids, list) or not ids or len(ids) > MAX_JOB_IDS
            or not all(isinstance(i, str) and job_id_problem(i) is None for i in ids)):
        raise Problem(422, "validation", "jobIds must be a list of 1 to "
                      f"{MAX_JOB_IDS} job ids",
                      [FieldError("jobIds", "type", "must be a list of job ids")])
    return list(dict.fromkeys(ids))


def _shown(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as the console shows it: the app's callback URL without its query and
    fragment (which may hold the app's own token)."""
    out = dict(record)
    url = out.get("callback_url")
    if isinstance(url, str) and url:
        parts = urlsplit(url)
        hidden = "?…" if parts.query or parts.fragment else ""
        host = parts.netloc.rpartition("@")[2]  # never a user:password@
        out["callback_url"] = urlunsplit((parts.scheme, host, parts.path, "", "")) + hidden
    return out
