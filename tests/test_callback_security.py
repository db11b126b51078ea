"""The callback endpoint against callers who are not Kie.

Only the URL we handed Kie for a job (its job id and token) can end that job, with or
without KIE_WEBHOOK_HMAC_KEY; what unknown callers can make us keep is capped; huge,
deep or slow requests cost the server next to nothing.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.config import keys
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.redis_server import free_port
from kie_covers.standin import KieStandin
from tests.conftest import process_env
from tests.services import StartWorker, WebProcess, WorkerProcess, wait_until
from tests.test_callback_endpoint import job_url, post, submitted_job, success_body

pytestmark = pytest.mark.e2e

StartWeb = Callable[..., WebProcess]


@pytest.fixture
def start_web(run_dir: Path) -> Iterator[StartWeb]:
    """Factory: start another ``covers web`` on a free loopback port with setting
    overrides; stopped after the test."""
    started: list[WebProcess] = []

    def start(**overrides: str) -> WebProcess:
        process = WebProcess(free_port(), process_env(**overrides), run_dir).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def state_of(job_id: str) -> str:
    return str(get_cover(job_id)["state"])


def rss_kib(web: WebProcess) -> int:
    """The web process's resident memory (VmRSS), in KiB."""
    assert web.process is not None
    for line in Path(f"/proc/{web.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def web_log(web: WebProcess) -> str:
    return web.log_path.read_text(errors="replace")


# --- only the job's own URL ends it ----------------------------------------------------

def test_a_signed_callback_without_the_job_token_does_not_end_the_job(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    # The suite's web process has KIE_WEBHOOK_HMAC_KEY set, and these are signed with
    # it: the signature alone is not enough
    job_id, cover_id = submitted_job(standin, start_worker)
    body = success_body(cover_id)
    for url in (web.url, f"{web.url}?job={job_id}", f"{web.url}?token=abc",
                job_url(web, job_id, token="A" * 43), job_url(web, job_id, token="")):
        answer = post(web, body, cover_id, url=url)
        assert answer.status_code == 401, url
        assert "error" in answer.json()
    assert state_of(job_id) == "submitted"
    assert post(web, body, cover_id, job=job_id).json() == {"status": "completed"}


def test_without_an_hmac_key_an_unsigned_callback_still_needs_the_job_token(
    standin: KieStandin, start_worker: StartWorker, start_web: StartWeb
) -> None:
    keyless = start_web(KIE_WEBHOOK_HMAC_KEY="")
    job_id, cover_id = submitted_job(standin, start_worker)
    body = success_body(cover_id)
    for url in (keyless.url, job_url(keyless, job_id, token="A" * 43)):
        answer = post(keyless, body, url=url)
        assert answer.status_code == 401
        assert answer.json()["error"]
    assert state_of(job_id) == "submitted"
    # Kie's own callback (to the URL it was given) needs no signature here
    assert post(keyless, body, job=job_id).json() == {"status": "completed"}
    assert state_of(job_id) == "succeeded"


def test_a_token_for_another_job_is_refused(
    standin: KieStandin, start_worker: StartWorker, web: WebProcess
) -> None:
    standin.set_callback_mode("drop")
    lazy = start_worker(KIE_POLL_INTERVAL="60")
    job_a, job_b = (enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/cb", queue=lazy.queue)
                    for _ in range(2))
    wait_until(lambda: state_of(job_a) == state_of(job_b) == "submitted", 15,
               message="both submitted")
    cover_a = str(get_cover(job_a)["cover_task_id"])
    token_b = job_url(web, job_b).rsplit("token=", 1)[1]
    # A's id with B's token: the token is not A's
    answer = post(web, success_body(cover_a), cover_a, url=job_url(web, job_a, token=token_b))
    assert answer.status_code == 401
    # B's own URL, carrying A's cover: B's URL ends only B
    answer = post(web, success_body(cover_a), cover_a, job=job_b)
    assert answer.status_code == 409
    assert "error" in answer.json()
    assert state_of(job_a) == "submitted" and state_of(job_b) == "submitted"
    assert get_cover(job_b)["images"] == []


# --- what unknown callers can make us keep ------------------------------------------------

def test_early_callbacks_are_refused_once_their_cap_is_full(
    standin: KieStandin, start_web: StartWeb
) -> None:
    capped = start_web(COVERS_EARLY_CALLBACK_BYTES="500")
    store = get_store()
    job_ids = [store.enqueue(str(uuid.uuid4()), uuid.uuid4().hex, "http://127.0.0.1:9/cb",
                             60, "covers-unused")[0] for _ in range(6)]
    answers: list[int] = []
    covers = [f"early-{uuid.uuid4().hex}" for _ in job_ids]
    for job_id, cover_id in zip(job_ids, covers, strict=True):
        answers.append(post(capped, success_body(cover_id), cover_id, job=job_id).status_code)
    size = len(json.dumps(success_body(covers[0])))
    kept = 500 // size
    assert 0 < kept < len(job_ids)
    assert answers == [200] * kept + [503] * (len(job_ids) - kept)
    client = store.redis
    assert all(client.exists(keys.early_callback(c)) for c in covers[:kept])
    assert not any(client.exists(keys.early_callback(c)) for c in covers[kept:])
    assert int(client.get(keys.EARLY_BYTES) or 0) == kept * size


# --- huge, deep and slow requests -----------------------------------------------------------

def send_chunked(web: WebProcess, path: str, total_bytes: int) -> tuple[float, int, bytes]:
    """Send a chunked POST of `total_bytes` (1 MiB chunks) until the server stops it.

    Returns:
        (seconds until the answer or the connection's end, bytes sent, answer).
    """
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n").encode()
    chunk = 1 << 20
    frame = f"{chunk:x}\r\n".encode() + b"[" * chunk + b"\r\n"
    sent = 0
    answer = b""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
        try:
            sock.sendall(head)
            while sent < total_bytes:
                sock.sendall(frame)
                sent += chunk
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: it has stopped reading
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
    return time.monotonic() - start, sent, answer


def test_a_50_mb_chunked_body_is_refused_at_once_without_growing_the_process(
    standin: KieStandin, start_web: StartWeb
) -> None:
    server = start_web()
    path = job_url(server, str(uuid.uuid4())).split(f":{server.port}", 1)[1]
    before = rss_kib(server)
    for _ in range(3):
        seconds, sent, answer = send_chunked(server, path, 50 * 1024 * 1024)
        assert seconds < 1.0
        assert sent < 10 * 1024 * 1024  # the server stopped reading long before the end
        assert not answer or answer.startswith(b"HTTP/1.1 413")
    grown = rss_kib(server) - before
    assert grown < 4 * 1024, f"RSS grew by {grown} KiB"
    # A declared Content-Length over the cap is refused before any body is sent
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Length: {50 * 1024 * 1024}\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=2).ok


def test_json_nested_too_deep_gets_400_without_a_traceback(
    standin: KieStandin, web: WebProcess
) -> None:
    job_id = str(uuid.uuid4())
    deep = b'{"data": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    answer = post(web, None, "abc", raw=deep, job=job_id)
    assert answer.status_code == 400
    assert "nested deeper" in answer.json()["error"]
    # Just over COVERS_MAX_JSON_DEPTH (20) is refused too; at it, the body is read (and
    # then refused for its missing data.taskId)
    nested: object = "x"
    for _ in range(20):
        nested = [nested]
    at_limit = {"code": 200, "msg": "ok", "data": {"taskId": "abc", "images": [], "x": nested}}
    assert "nested deeper" in post(web, None, "abc", raw=json.dumps(at_limit).encode(),
                                   job=job_id).json()["error"]
    over = json.dumps({"x": nested}).encode()  # 21 levels
    under = json.dumps({"x": nested[0]}).encode()  # type: ignore[index]  # 20 levels
    assert post(web, None, "abc", raw=over, job=job_id).status_code == 400
    answer = post(web, None, "abc", raw=under, job=job_id)
    assert answer.status_code == 400 and "nested deeper" not in answer.json()["error"]
    assert "RecursionError" not in web_log(web) and "Traceback" not in web_log(web)


def test_slow_clients_do_not_starve_healthz_and_stalled_ones_are_closed(
    standin: KieStandin, start_web: StartWeb
) -> None:
    server = start_web(COVERS_WEB_CHANNEL_TIMEOUT="2")
    path = job_url(server, str(uuid.uuid4())).split(f":{server.port}", 1)[1]
    stalled: list[socket.socket] = []
    try:
        for _ in range(20):  # each sends a head and one byte of its body, then stalls
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Content-Length: 1000\r\n\r\n{".encode())
            stalled.append(sock)
        started = time.monotonic()
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=2).ok
        assert time.monotonic() - started < 1.0
        # Within the channel timeout plus waitress's cleanup interval, all are closed
        started = time.monotonic()
        for sock in stalled:
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 6.0
    finally:
        for sock in stalled:
            sock.close()


# --- the secret stays secret -----------------------------------------------------------------

def test_the_shared_secret_reaches_no_log_record_or_result(
    standin: KieStandin, worker: WorkerProcess, web: WebProcess, run_dir: Path
) -> None:
    ended = [wait_for_cover(enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/cb"),
                            timeout_s=20) for _ in range(3)]
    assert [record["state"] for record in ended] == ["succeeded"] * 3
    post(web, success_body("abc"), "abc", url=job_url(web, ended[0]["job_id"], token="A"))
    client = get_store().redis
    secret = client.get(keys.CALLBACK_SECRET)
    assert isinstance(secret, str) and len(secret) >= 40
    logs = "".join(path.read_text(errors="replace") for path in run_dir.glob("*.log"))
    assert "by callback" in logs  # the logs are really there
    assert secret not in logs
    for key in client.scan_iter():
        if key == keys.CALLBACK_SECRET:
            continue
        kind = client.type(key)
        if kind == "string":
            text = str(client.get(key))
        elif kind == "hash":
            text = repr(client.hgetall(key))
        elif kind == "zset":
            text = repr(client.zrange(key, 0, -1))
        elif kind == "list":
            text = repr(client.lrange(key, 0, -1))
        else:
            text = repr(client.smembers(key))
        assert secret not in text, key
