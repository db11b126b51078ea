"""Secrets masked at the source, and one lifetime per outcome.

A Kie answer that echoes the request's ``Authorization`` header must not carry
the API key into the job record, the failure store, the Celery result or the
app's notice. A failed job's Celery result lives as long as its failure record.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import redis
from celery.result import AsyncResult

from kie_covers import enqueue_cover, wait_for_cover
from kie_covers.config import Secret, load_settings
from kie_covers.core import errors
from kie_covers.core.answers import interpret
from kie_covers.core.masking import MASK, Masker
from kie_covers.runtime.app import app
from kie_covers.runtime.kie_client import KieClient
from kie_covers.services.endings import record_result
from kie_covers.services.failures import list_failures
from kie_covers.store.record import Job
from tests.conftest import API_KEY
from tests.services import StartWorker, serve_in_thread, stop_server, wait_until


class _Echo(BaseHTTPRequestHandler):
    """A broken "Kie" that quotes the request's Authorization header in its error."""

    def do_POST(self) -> None:
        self._echo()

    def do_GET(self) -> None:
        self._echo()

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"code": 422, "data": None, "msg": (
            f"bad request; we got Authorization: {self.headers.get('Authorization')} "
            f"and key={self.headers.get('Authorization', '').split()[-1]}")}).encode()
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


class _App(BaseHTTPRequestHandler):
    """The calling app: keeps every notice body it receives."""

    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        _App.bodies.append(self.rfile.read(length))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serve_in_thread(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop_server(server)


@pytest.fixture
def echo_kie() -> Iterator[str]:
    """A loopback "Kie" that echoes credentials in its errors."""
    yield from _serve(_Echo)


@pytest.fixture
def app_server() -> Iterator[str]:
    """A loopback app that records the notices it gets."""
    _App.bodies = []
    yield from _serve(_App)


def test_a_masker_strips_literal_secrets_and_credential_values() -> None:
    masker = Masker(["s3cr3t-key-123", None, "abc"])
    text = ('key s3cr3t-key-123; "Authorization": "Bearer tok.en-1"; authorization=Basic '
            'dXNlcjpwYXNz; Proxy-Authorization: xyz; bearer other')
    masked = masker(text)
    for leaked in ("s3cr3t-key-123", "tok.en-1", "dXNlcjpwYXNz", "xyz", "other"):
        assert leaked not in masked
    assert masked.count(MASK) == 5
    assert masker("a plain message about abc") == "a plain message about abc"


def test_kies_message_is_masked_before_it_becomes_an_error() -> None:
    body = json.dumps({"code": 500, "msg": "echo: Authorization: Bearer K3Y-VALUE-9"})
    with pytest.raises(errors.UpstreamError) as caught:
        interpret(500, {}, body.encode())
    assert "K3Y-VALUE-9" not in str(caught.value) and MASK in caught.value.message


def test_the_client_masks_an_echoed_key_in_process(echo_kie: str) -> None:
    client = KieClient(echo_kie, Secret("the-api-key-0123456789"), 2)
    with pytest.raises(errors.CoverError) as caught:
        client.generate("music-1", "http://127.0.0.1:9/cb")
    assert "the-api-key-0123456789" not in repr(caught.value.to_dict())
    assert "the-api-key-0123456789" not in str(caught.value)


@pytest.mark.e2e
def test_an_echoed_key_is_masked_everywhere_a_failure_goes(
    echo_kie: str, app_server: str, start_worker: StartWorker
) -> None:
    # Given a worker whose "Kie" quotes the Authorization header in its 422
    worker = start_worker(KIE_BASE_URL=echo_kie, COVERS_ALLOW_PRIVATE_TARGETS="1")
    # When a job fails on that answer
    job_id = enqueue_cover(uuid.uuid4().hex, f"{app_server}/notices", queue=worker.queue)
    record = wait_for_cover(job_id, timeout_s=30)
    assert record["state"] == "failed" and record["error"]["kind"] == "rejected"
    assert MASK in record["error"]["message"]
    wait_until(lambda: _App.bodies, 20, message="the app's notice")
    # Then the key is in none of: the record, the failure store, the Celery result,
    # the app's notice, the worker's log
    failures = [f for f in list_failures(limit=1000) if f["job_id"] == job_id]
    with pytest.raises(errors.Rejected) as raised:
        AsyncResult(job_id, app=app).get(timeout=10)
    seen = {
        "record": json.dumps(record),
        "failure store": json.dumps(failures),
        "celery result": repr(raised.value.args) + str(raised.value),
        "notice": b"".join(_App.bodies).decode(),
        "worker log": worker.log(),
    }
    assert failures and _App.bodies
    assert {where: API_KEY in text for where, text in seen.items()} == dict.fromkeys(seen, False)


def test_a_failed_jobs_celery_result_lives_as_long_as_its_failure_record() -> None:
    settings = load_settings()
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    failed = Job.new(str(uuid.uuid4()), "m", "", "", 1.0)
    failed.error = errors.NotFound("gone", 404).to_dict()
    succeeded = Job.new(str(uuid.uuid4()), "m", "", "", 1.0)
    succeeded.images = ["http://127.0.0.1:9/a.png"]
    for job in (failed, succeeded):
        record_result(job, job.to_dict())
    key = app.backend.get_key_for_task
    failed_ttl = client.ttl(key(failed.job_id))
    succeeded_ttl = client.ttl(key(succeeded.job_id))
    client.delete(key(failed.job_id), key(succeeded.job_id))
    assert settings.failure_ttl - 60 < failed_ttl <= settings.failure_ttl
    assert settings.result_ttl - 60 < succeeded_ttl <= settings.result_ttl
