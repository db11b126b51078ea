"""The producer API over HTTP: what an app in any language calls (mounted in `covers web`).

Routes (all JSON; errors are ``application/problem+json``, RFC 9457):

    POST /v1/covers                  {taskId, callBackUrl, priority?, tenant?}
                                     -> 202 {jobId, state}; idempotent per music task
    GET  /v1/covers/{jobId}          -> 200, the same JSON as `get_cover`
    POST /v1/covers/batch            {items: [...], priority?, tenant?, skipBad?}
                                     -> 202 {accepted, refused, results, errors}
    GET  /v1/failures?kind=&code=&limit=&offset=
                                     -> 200 {failures, total, limit, offset}
    POST /v1/covers/{jobId}/retry    -> 202 {jobId, state, result}
    GET  /v1/openapi.json            the OpenAPI 3.1 document (no token needed)

The OpenAPI document (``worker/openapi/covers-api.json``, package data) describes
every route, body and answer; it is served byte for byte as kept in the repository.

Auth: with COVERS_API_TOKEN set, every route but the document needs
``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise). Without
it, only loopback clients that no proxy forwarded are answered (403 otherwise).

Limits, as on the callback endpoint: COVERS_MAX_API_BYTES per body (413, before
reading when declared), COVERS_MAX_JSON_DEPTH (400), COVERS_API_MAX_BATCH items per
batch (422).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from kie_covers.config import Settings
from kie_covers.core.addresses import is_loopback
from kie_covers.core.cover_items import check_batch
from kie_covers.core.errors import InvalidPayload, KieCoversError, StoreFull, UnknownJob
from kie_covers.core.failure_filter import parse_failure_filter
from kie_covers.core.problems import PROBLEM_MEDIA_TYPE, FieldError, field_errors, problem
from kie_covers.core.schemas import job_id_problem, validate_cover_request
from kie_covers.services.batch import batch_records
from kie_covers.services.failures import count_failures, list_failures, retry_jobs
from kie_covers.services.producer import enqueue_cover, get_cover
from kie_covers.worker.http_body import (
    Refused,
    declared_length,
    decode_json,
    read_body,
    status_line,
)

log = logging.getLogger("covers.api")

#: Every route of the API starts with this.
API_PREFIX = "/v1/"
#: Where the OpenAPI document is served.
OPENAPI_PATH = "/v1/openapi.json"
#: Headers a reverse proxy adds: a request carrying one did not come from this host,
#: whatever its socket address says.
FORWARDING_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")
#: Most query parameters parsed from a URL.
MAX_QUERY_FIELDS = 10

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
Answer = tuple[int, dict[str, Any] | bytes]


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI document as kept in the repository (package data), unchanged; read
    once per process."""
    return (resources.files("kie_covers.worker") / "openapi" / "covers-api.json").read_bytes()


def local_client(environ: Mapping[str, Any]) -> bool:
    """True if a request came straight from this host: its ``REMOTE_ADDR`` is loopback
    and it carries no forwarding header (`FORWARDING_HEADERS`), which a reverse proxy
    on this host would add for a client from anywhere."""
    if any(environ.get(name) for name in FORWARDING_HEADERS):
        return False
    return is_loopback(str(environ.get("REMOTE_ADDR", "")))


class Problem(KieCoversError):
    """An error answer: `kie_covers.core.problems.problem` with these members.

    Args:
        status: the HTTP status code.
        kind: the problem kind (a key of `kie_covers.core.problems.TITLES`).
        detail: what went wrong (never a secret).
        errors: per-field errors, for validation problems.
        headers: extra response headers (``Allow``, ``WWW-Authenticate``).
        extra: extension members of the document.
    """

    def __init__(self, status: int, kind: str, detail: str,
                 errors: Sequence[FieldError] | None = None, *,
                 headers: list[tuple[str, str]] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.errors = errors
        self.headers = headers or []
        self.extra = extra or {}

    def document(self) -> dict[str, Any]:
        """The problem+json body."""
        return problem(self.status, self.kind, self.detail, self.errors, **self.extra)


def _invalid(detail: str, errors: Sequence[FieldError]) -> Problem:
    return Problem(422, "validation", detail, errors)


#: (method, path segments, handler name) in the order tried; ``None`` is the job id.
ROUTES: tuple[tuple[str, tuple[str | None, ...], str], ...] = (
    ("POST", ("v1", "covers"), "create"),
    ("POST", ("v1", "covers", "batch"), "create_batch"),
    ("GET", ("v1", "covers", None), "read"),
    ("POST", ("v1", "covers", None, "retry"), "retry"),
    ("GET", ("v1", "failures"), "failures"),
    ("GET", ("v1", "openapi.json"), "openapi"),
)


def path_segments(environ: Mapping[str, Any]) -> list[str]:
    """The request path's segments, each percent-decoded on its own (so a job id may
    hold an encoded ``/``): from the raw ``REQUEST_URI`` when the server gives it (as
    waitress does), else from ``PATH_INFO``."""
    raw = environ.get("REQUEST_URI")
    if not raw:
        raw = quote(str(environ.get("PATH_INFO", "")), safe="/")
    return [unquote(segment) for segment in urlsplit(str(raw)).path.split("/")[1:]]


def _match(route: tuple[str | None, ...], segments: Sequence[str]) -> dict[str, str] | None:
    """The route's parameters if `segments` match it, else None."""
    if len(route) != len(segments):
        return None
    params: dict[str, str] = {}
    for expected, segment in zip(route, segments, strict=True):
        if expected is None:
            params["job_id"] = segment
        elif expected != segment:
            return None
    return params


class ProducerApi:
    """The WSGI application for paths under `API_PREFIX`.

    Each request is checked in this order: its route (404, 405), its client (401 or
    403, see the module docstring; the document needs none), its declared body length
    (413), then its body (413, 400) and fields (422).

    Args:
        settings: the settings (token, caps).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        try:
            handler, params = self._route(method, path_segments(environ))
            if handler != "openapi":
                self._authorize(environ)
            status, payload = getattr(self, handler)(environ, **params)
        except Problem as refused:
            log.info("api %s %r refused: %d %s", method, path[:200], refused.status,
                     refused.detail)
            return _send(start_response, refused.status, refused.document(),
                         PROBLEM_MEDIA_TYPE, refused.headers)
        except Exception:
            log.exception("api %s %r failed", method, path[:200])
            answer = Problem(503, "unavailable", "temporarily unavailable; send again "
                             "(every write is idempotent)")
            return _send(start_response, 503, answer.document(), PROBLEM_MEDIA_TYPE,
                         [("Retry-After", "1")])
        if isinstance(payload, bytes):
            return _send_bytes(start_response, status, payload, "application/json", [])
        return _send(start_response, status, payload, "application/json",
                     _location(environ, handler, payload))

    # --- routing, auth and bodies ---------------------------------------------------

    @staticmethod
    def _route(method: str, segments: Sequence[str]) -> tuple[str, dict[str, str]]:
        allowed: list[str] = []
        for route_method, route, handler in ROUTES:
            params = _match(route, segments)
            if params is None:
                continue
            if route_method == method:
                return handler, params
            allowed.append(route_method)
        if allowed:
            raise Problem(405, "method-not-allowed", f"{method} is not allowed here",
                          headers=[("Allow", ", ".join(sorted(set(allowed))))])
        raise Problem(404, "not-found", "no such path")

    def _authorize(self, environ: Environ) -> None:
        token = self.settings.api_token
        if token is None:
            if not local_client(environ):
                raise Problem(403, "forbidden", "without COVERS_API_TOKEN the API answers "
                              "only clients on this host (loopback, not forwarded)")
            return
        scheme, _, given = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        challenge = 'Bearer realm="kie-covers"'
        if scheme.lower() != "bearer" or not given.strip():
            raise Problem(401, "unauthorized", "send Authorization: Bearer <token>",
                          headers=[("WWW-Authenticate", challenge)])
        # Constant time; the token given is never logged nor echoed.
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                                   token.reveal().encode()):
            raise Problem(401, "unauthorized", "wrong bearer token",
                          headers=[("WWW-Authenticate", f'{challenge}, error="invalid_token"')])

    def _json_body(self, environ: Environ) -> Any:
        cap = self.settings.max_api_bytes
        try:
            body = read_body(environ, declared_length(environ, cap), cap)
            return decode_json(body, self.settings.max_json_depth)
        except Refused as refused:
            kind = "too-large" if refused.code == 413 else "bad-request"
            raise Problem(refused.code, kind, refused.message) from None

    @staticmethod
    def _query(environ: Environ) -> dict[str, str]:
        try:
            query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True,
                             max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            raise Problem(400, "bad-request", f"more than {MAX_QUERY_FIELDS} query "
                          "parameters") from None
        repeated = [FieldError(name, "single", "given more than once")
                    for name, values in query.items() if len(values) > 1]
        if repeated:
            raise _invalid("a query parameter is repeated", repeated)
        return {name: values[0] for name, values in query.items()}

    # --- handlers: each returns (status, JSON-ready payload) ------------------------

    def create(self, environ: Environ) -> Answer:
        """POST /v1/covers: queue one cover job (or find the live one)."""
        body = self._json_body(environ)
        try:
            request = validate_cover_request(body)
        except InvalidPayload as invalid:
            raise _invalid(invalid.message, field_errors(invalid.fields)) from None
        job_id = _enqueue(request)
        return 202, {"jobId": job_id, "state": get_cover(job_id)["state"]}

    def create_batch(self, environ: Environ) -> Answer:
        """POST /v1/covers/batch: queue many; all or nothing unless ``skipBad``."""
        checked = check_batch(self._json_body(environ), self.settings.api_max_batch)
        if checked.refused_whole:
            raise _invalid(f"{len(checked.errors)} error(s); nothing queued", checked.errors)
        job_ids = [_enqueue(request) for _index, request in checked.rows]
        records = batch_records(job_ids)
        results = [{"index": index, "jobId": job_id,
                    "state": record["state"] if record else "queued"}
                   for (index, _request), job_id, record in zip(checked.rows, job_ids, records,
                                                                strict=True)]
        refused = len({error.index for error in checked.errors})
        return 202, {"accepted": len(results), "refused": refused, "results": results,
                     "errors": [error.to_dict() for error in checked.errors]}

    def read(self, environ: Environ, job_id: str) -> Answer:
        """GET /v1/covers/{jobId}: the job's record."""
        return 200, job_record(job_id)

    def retry(self, environ: Environ, job_id: str) -> Answer:
        """POST /v1/covers/{jobId}/retry: queue a failed job again under its id."""
        job_record(job_id)  # 404 for an unknown job
        result = retry_jobs([job_id], by="api")[0].result
        if result == "unknown":
            raise Problem(404, "not-found", f"no cover job {job_id!r}")
        if result != "ok":
            raise Problem(409, "conflict", _RETRY_REFUSALS.get(result, result),
                          extra={"jobId": job_id, "result": result})
        return 202, {"jobId": job_id, "state": get_cover(job_id)["state"], "result": result}

    def failures(self, environ: Environ) -> Answer:
        """GET /v1/failures: failed jobs, newest first, as ``covers failures`` lists."""
        which, errors = parse_failure_filter(self._query(environ))
        if errors:
            raise _invalid("bad failures filter", errors)
        records = list_failures(which.kind, which.code, limit=which.limit,
                                offset=which.offset, since=which.since, until=which.until)
        return 200, {"failures": records,
                     "total": count_failures(which.kind, which.code, since=which.since,
                                             until=which.until),
                     "limit": which.limit, "offset": which.offset}

    def openapi(self, environ: Environ) -> Answer:
        """GET /v1/openapi.json: the document, as kept in the repository."""
        return 200, openapi_document()


#: Why a retry was refused, by `RetryOutcome.result`.
_RETRY_REFUSALS = {
    "not_failed": "the job is not failed (queued, running or succeeded): nothing to retry",
    "superseded": "the job's music task has another live or succeeded job; retrying "
                  "would pay twice",
    "invalid_payload": "the job's input was refused: a retry would fail the same way",
}


#: Seconds a client is asked to wait when Redis is full (``Retry-After``).
FULL_RETRY_AFTER_S = 5


def _enqueue(request: Mapping[str, Any]) -> str:
    try:
        return enqueue_cover(request["taskId"], request["callBackUrl"],
                             priority=request["priority"], tenant=request["tenant"])
    except StoreFull as full:
        raise Problem(503, "store-full", str(full),
                      headers=[("Retry-After", str(FULL_RETRY_AFTER_S))]) from None


def job_record(job_id: str) -> dict[str, Any]:
    """`get_cover` of `job_id`, or a 404 problem (also for an id no job could have); the
    API's and the console's."""
    if job_id_problem(job_id) is not None:
        raise Problem(404, "not-found", "no such cover job (not a valid job id)")
    try:
        return get_cover(job_id)
    except UnknownJob:
        raise Problem(404, "not-found", f"no cover job {job_id!r} (never enqueued, or "
                      "expired)") from None


def _location(environ: Environ, handler: str, payload: Mapping[str, Any]
              ) -> list[tuple[str, str]]:
    """``Location`` of the job a create or retry answer names (where to read it)."""
    if handler not in ("create", "retry"):
        return []
    base = str(environ.get("SCRIPT_NAME", "")).rstrip("/")
    return [("Location", f"{base}{API_PREFIX}covers/{payload['jobId']}")]


def _send(start_response: StartResponse, status: int, payload: Mapping[str, Any],
          content_type: str, headers: list[tuple[str, str]]) -> list[bytes]:
    return _send_bytes(start_response, status, json.dumps(payload).encode(), content_type,
                       headers)


def _send_bytes(start_response: StartResponse, status: int, body: bytes, content_type: str,
                headers: list[tuple[str, str]]) -> list[bytes]:
    start_response(status_line(status), [("Content-Type", content_type),
                                          ("Content-Length", str(len(body))), *headers])
    return [body]
