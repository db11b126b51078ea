"""Edges of input: ids matched whole, callback URLs without control characters or
non-ASCII, raw job ids capped, settings in range, the CLI's Redis check, batch caps
and CLI number options. Each refusal is a clear error naming what is wrong."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import pytest
import redis

from kie_covers import enqueue_cover, get_cover
from kie_covers.config.settings import SETTINGS, load_settings
from kie_covers.core import batch as batch_module
from kie_covers.core.batch import (
    MAX_LINE_BYTES,
    BatchTooLarge,
    read_batch,
)
from kie_covers.core.errors import InvalidPayload, SettingsError, UnknownJob
from kie_covers.core.schemas import MAX_JOB_ID_CHARS, job_id_problem, validate_cover_request
from kie_covers.runtime.app import app
from kie_covers.runtime.messages import COVER_TASK
from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.services.cover_run import JOB_ID_SHOWN, JobIdRefused, run_cover
from kie_covers.standin import KieStandin
from kie_covers.worker import cli
from tests.conftest import QUEUE, process_env
from tests.services import ROOT, WorkerProcess, wait_until

GOOD_URL = "http://127.0.0.1:9/cb"
#: What the CLI did before its Redis check: redis-py's retries took about 9.5 s.
OLD_REDIS_FAILURE_S = 9.0


def _covers(*args: str, stdin: IO[bytes] | None = None, **env: str
            ) -> subprocess.CompletedProcess[str]:
    """Run ``covers ARGS`` in a child process with the suite's settings plus `env`;
    `stdin` defaults to none (an empty input)."""
    return subprocess.run(  # check=False: the exit code is the point
        [sys.executable, "-m", "kie_covers.worker.cli", *args], check=False, cwd=ROOT,
        env=process_env(**env), stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )


# --- taskId and job ids are matched whole -------------------------------------------


@pytest.mark.parametrize("task_id", ["x\n", "x\r\n", "\nx", "x\n\n", "x\x00", "x\t"])
def test_a_task_id_with_a_line_end_is_not_a_second_id(
    standin: KieStandin, redis_server: RedisServer, task_id: str
) -> None:
    # Given a job for music task "x" (queued where no worker takes it)
    first = enqueue_cover("x", GOOD_URL, queue="covers-edges-unconsumed")
    # When "x\n" comes in, it is refused, not a second job (and a second paid generate)
    with pytest.raises(InvalidPayload) as caught:
        enqueue_cover(task_id, GOOD_URL, queue="covers-edges-unconsumed")
    assert "letters, digits" in " ".join(caught.value.fields["taskId"])
    assert enqueue_cover("x", GOOD_URL, queue="covers-edges-unconsumed") == first
    client = redis.Redis.from_url(redis_server.url)
    assert client.llen("covers-edges-unconsumed") == 1


def test_a_task_id_keeps_its_length_cap() -> None:
    assert validate_cover_request({"taskId": "a" * 128, "callBackUrl": GOOD_URL})
    with pytest.raises(InvalidPayload, match="Length"):
        validate_cover_request({"taskId": "a" * 129, "callBackUrl": GOOD_URL})


@pytest.mark.parametrize(
    ("job_id", "words"),
    [
        ("x\n", "printable ASCII"),
        ("job 1", "printable ASCII"),
        ("jöb", "printable ASCII"),
        ("", "must not be empty"),
        ("j" * (MAX_JOB_ID_CHARS + 1), "longer than maximum length 128"),
        ("j" * 100_000, "longer than maximum length 128"),
        (None, "must be a string"),
    ],
)
def test_a_bad_job_id_is_named_without_quoting_it(job_id: object, words: str) -> None:
    problem = job_id_problem(job_id)
    assert problem is not None and words in problem
    assert len(problem) < 120  # never the id itself


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "j" * MAX_JOB_ID_CHARS,
                                    "app:job/42{x}~!"])
def test_good_job_ids_pass(job_id: str) -> None:
    assert job_id_problem(job_id) is None


def test_a_run_with_a_huge_job_id_writes_nothing_and_logs_it_cut_short(
    standin: KieStandin, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = "j" * 100_000
    with caplog.at_level(logging.WARNING, "covers.task"), pytest.raises(JobIdRefused) as caught:
        run_cover(job_id, {"taskId": "abc", "callBackUrl": GOOD_URL}, QUEUE,
                  lambda *_: None)
    assert isinstance(caught.value, InvalidPayload)
    assert "job_id" in caught.value.fields
    assert redis.Redis.from_url(redis_server.url).dbsize() == 0
    [line] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert "j" * JOB_ID_SHOWN in line and "j" * (JOB_ID_SHOWN + 1) not in line
    assert len(line) < 300


# --- callBackUrl: no control characters, ASCII only ---------------------------------


@pytest.mark.parametrize("char", ["\x00", "\r", "\n", "\t", "\x1b", "\x7f", "\x85"])
def test_a_callback_url_with_a_control_character_is_refused(char: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        validate_cover_request({"taskId": "abc", "callBackUrl": f"http://a.example/c{char}b"})
    [message] = caught.value.fields["callBackUrl"]
    assert "control characters" in message
    assert f"U+{ord(char):04X}" in message


def test_a_callback_url_with_non_ascii_in_the_path_is_refused_with_a_hint() -> None:
    with pytest.raises(InvalidPayload) as caught:
        validate_cover_request({"taskId": "abc", "callBackUrl": "http://a.example/büch"})
    [message] = caught.value.fields["callBackUrl"]
    assert "must be ASCII" in message and "percent-encode" in message
    # the percent-encoded form is the same URL, and fine
    assert validate_cover_request({"taskId": "abc",
                                   "callBackUrl": "http://a.example/b%C3%BCch"})


def test_an_idna_host_is_refused_naming_its_punycode_form_which_is_accepted() -> None:
    # Refused rather than converted: the URL kept and called is exactly the app's.
    with pytest.raises(InvalidPayload) as caught:
        validate_cover_request({"taskId": "abc", "callBackUrl": "http://bücher.example/cb"})
    [message] = caught.value.fields["callBackUrl"]
    assert "xn--bcher-kva.example" in message
    clean = validate_cover_request({"taskId": "abc",
                                    "callBackUrl": "http://xn--bcher-kva.example/cb"})
    assert clean["callBackUrl"] == "http://xn--bcher-kva.example/cb"


def test_a_look_alike_host_gets_no_misleading_hint() -> None:
    with pytest.raises(InvalidPayload) as caught:
        validate_cover_request({"taskId": "abc", "callBackUrl": "http://\u2488.example/cb"})
    [message] = caught.value.fields["callBackUrl"]
    assert "not a valid internationalised name" in message


def test_the_existing_url_rules_hold() -> None:
    for url, words in [("ftp://a.example/x", "Not a valid URL"),
                       ("/relative", "Not a valid URL"),
                       ("http://a.example/" + "a" * 2100, "Longer than maximum")]:
        with pytest.raises(InvalidPayload, match=words):
            validate_cover_request({"taskId": "abc", "callBackUrl": url})


# --- settings in range --------------------------------------------------------------

def _float_settings() -> list[str]:
    """Every setting whose default is a number with a fraction or seconds: parsed as
    a float (by `_positive_float` or `_ttl`)."""
    names = []
    for spec in SETTINGS:
        if spec.default is None:
            continue
        try:
            value = spec.parse(spec.env, spec.default)
        except SettingsError:
            continue
        if isinstance(value, float):
            names.append(spec.env)
    return names


@pytest.mark.parametrize("name", _float_settings())
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "0", "-1", "1e400"])
def test_every_float_setting_is_finite_and_positive(name: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({name: raw})
    assert name in str(caught.value)
    assert "finite number greater than 0" in str(caught.value)


@pytest.mark.parametrize("name", ["COVERS_RESULT_TTL", "COVERS_FAILURE_TTL"])
def test_ttls_are_at_least_a_minute(name: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} must be at least 60 seconds"):
        load_settings({name: "59"})
    assert getattr(load_settings({name: "60"}), name.removeprefix("COVERS_").lower()) == 60


@pytest.mark.parametrize("raw", ["0", "-1", "65536", "70000", "http", "80.5"])
def test_the_metrics_port_is_a_port(raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"COVERS_METRICS_PORT": raw})
    assert "COVERS_METRICS_PORT must be a port number from 1 to 65535" in str(caught.value)


def test_ports_at_the_ends_of_the_range_load() -> None:
    assert load_settings({"COVERS_METRICS_PORT": "1"}).metrics_port == 1
    assert load_settings({"COVERS_METRICS_PORT": "65535"}).metrics_port == 65535


def test_a_rate_window_must_be_finite() -> None:
    with pytest.raises(SettingsError, match="KIE_RATE_LIMIT"):
        load_settings({"KIE_RATE_LIMIT": "20/" + "9" * 400 + "s"})


# --- batch caps ---------------------------------------------------------------------


def test_a_batch_without_line_ends_is_refused_after_one_line() -> None:
    with pytest.raises(BatchTooLarge) as caught:
        read_batch("/dev/zero")
    assert caught.value.fields == {"line 1": [
        f"longer than {MAX_LINE_BYTES} bytes; is this a batch of cover requests?"]}
    with pytest.raises(BatchTooLarge, match="line 1"):
        read_batch(io.BytesIO(b"\0" * 10_000_000))


def test_a_line_at_the_cap_is_a_bad_line_and_one_over_refuses_the_batch() -> None:
    at_cap = b"a" * MAX_LINE_BYTES + b"\r\n"
    plan = read_batch(io.BytesIO(b"good,http://127.0.0.1:9/cb\n" + at_cap))
    assert [r.music_task_id for r in plan.rows] == ["good"]
    assert [b.line_no for b in plan.bad] == [2]
    with pytest.raises(BatchTooLarge, match="line 2"):
        read_batch(io.BytesIO(b"good,http://127.0.0.1:9/cb\n" + b"a" * (MAX_LINE_BYTES + 1)))
    with pytest.raises(BatchTooLarge, match="line 1"):
        read_batch(["a" * (MAX_LINE_BYTES + 1)])


def test_a_batch_over_the_line_or_byte_cap_is_refused(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setattr(batch_module, "MAX_BATCH_LINES", 10)
    with pytest.raises(BatchTooLarge, match="more than 10 lines"):
        read_batch(io.BytesIO(b"\n" * 11))
    assert read_batch(io.BytesIO(b"\n" * 10)).rows == []
    monkeypatch.setattr(batch_module, "MAX_BATCH_LINES", 100_000)
    monkeypatch.setattr(batch_module, "MAX_BATCH_BYTES", 2 * 1024 * 1024)
    with pytest.raises(BatchTooLarge, match="more than 2 MiB"):
        read_batch(io.BytesIO(b"a,http://127.0.0.1:9/cb\n" * 100_000))


def test_files_are_read_line_by_line_with_old_mac_line_ends_kept(tmp_path: Path) -> None:
    path = tmp_path / "songs.csv"
    path.write_bytes(b"a1,http://127.0.0.1:9/cb\rb2,http://127.0.0.1:9/cb\r\n\nc3\n")
    plan = read_batch(path, default_callback_url=GOOD_URL)
    assert [(r.line_no, r.music_task_id) for r in plan.rows] == [(1, "a1"), (2, "b2"),
                                                                 (4, "c3")]


# --- CLI: numbers and Redis, in process -----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["enqueue", "abc", GOOD_URL, "--wait", "--timeout", "nan"], "--timeout"),
        (["enqueue", "abc", GOOD_URL, "--timeout", "inf"], "--timeout"),
        (["enqueue", "abc", GOOD_URL, "--timeout", "0"], "--timeout"),
        (["enqueue", "--from", "x.csv", "--timeout", "-5"], "--timeout"),
        (["failures", "--limit", "-1"], "--limit"),
        (["failures", "--limit", "0"], "--limit"),
        (["failures", "--limit", "many"], "--limit"),
        (["metrics", "--port", "70000"], "--port"),
        (["demo", "--count", "0"], "--count"),
    ],
)
def test_cli_numbers_must_be_finite_and_positive(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {words}" in err


def test_the_redis_address_never_shows_a_password() -> None:
    url = "redis://user:hunter2@10.1.2.3:6380/0"
    assert cli.redis_address(url) == "10.1.2.3:6380"
    message = cli.unreachable_message(
        url, redis.ConnectionError("Error 111 connecting to 10.1.2.3:6380. Connection refused."))
    assert "hunter2" not in message and "user" not in message
    assert "REDIS_URL 10.1.2.3:6380 (Connection refused)" in message
    assert cli.redis_address("redis://[::1]:7000/0") == "[::1]:7000"
    assert cli.redis_address("unix:///run/redis.sock") == "/run/redis.sock"
    assert "timed out" in cli.unreachable_message(url, redis.TimeoutError("Timeout"))


def test_redis_lost_after_the_check_is_the_same_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def lost(_args: object) -> int:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(cli, "check_redis", lambda url: None)
    monkeypatch.setitem(cli.COMMANDS, "status", lost)
    assert cli.main(["status", "some-job"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot reach Redis at REDIS_URL" in err


def test_an_unknown_job_is_still_exit_1_with_redis_up(standin: KieStandin) -> None:
    assert cli.main(["status", "no-such-job"]) == 1
    with pytest.raises(UnknownJob):
        get_cover("no-such-job")


# --- end to end: processes ----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("argv", [["status", "some-job"], ["failures"],
                                  ["enqueue", "abc", GOOD_URL], ["worker"]])
def test_an_unreachable_redis_is_one_line_and_exit_2_at_once(argv: list[str]) -> None:
    port = free_port()  # nobody listens on it
    start = time.monotonic()
    done = _covers(*argv, REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0")
    elapsed = time.monotonic() - start
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"REDIS_URL 127.0.0.1:{port}" in lines[0]
    assert "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    # before the check, redis-py's retries made this a traceback after about 9.5 s
    assert elapsed < OLD_REDIS_FAILURE_S


@pytest.mark.e2e
def test_enqueue_from_dev_zero_is_refused_and_queues_nothing(
    standin: KieStandin, redis_server: RedisServer
) -> None:
    done = _covers("enqueue", "--from", "/dev/zero", "--callback-url", GOOD_URL)
    assert done.returncode == 2
    assert "line 1: longer than 8192 bytes" in done.stderr
    with open("/dev/zero", "rb") as zeros:
        piped = _covers("enqueue", "--from", "-", "--callback-url", GOOD_URL, stdin=zeros)
    assert piped.returncode == 2
    assert "<stdin>" in piped.stderr and "longer than 8192 bytes" in piped.stderr
    client = redis.Redis.from_url(redis_server.url)
    assert client.llen(QUEUE) == 0
    # No job was recorded (a live session worker's heartbeat and gauges may exist)
    for pattern in ("covers:job:*", "covers:music:*", "covers:state:*", "covers:due*"):
        assert not list(client.scan_iter(pattern)), pattern


@pytest.mark.e2e
def test_cli_nan_timeout_and_negative_limit_exit_2() -> None:
    timeout = _covers("enqueue", "abc", GOOD_URL, "--wait", "--timeout", "nan")
    assert timeout.returncode == 2 and "--timeout" in timeout.stderr
    limit = _covers("failures", "--limit", "-1")
    assert limit.returncode == 2 and "--limit" in limit.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("job_id", ["j" * 100_000, "job\n", "two words"])
def test_a_raw_message_with_a_bad_job_id_is_dropped_without_a_record(
    standin: KieStandin, worker: WorkerProcess, redis_server: RedisServer, job_id: str
) -> None:
    dropped = worker.log().count("message dropped: job id")
    app.send_task(COVER_TASK, kwargs={"taskId": "rawedge1", "callBackUrl": GOOD_URL},
                  task_id=job_id, queue=QUEUE)
    wait_until(lambda: worker.log().count("message dropped: job id") > dropped, 30,
               message="the worker to drop the message")
    # The worker stays alive and takes the next job
    record = get_cover(enqueue_cover(uuid.uuid4().hex, GOOD_URL))
    wait_until(lambda: get_cover(record["job_id"])["state"] == "succeeded", 30,
               message="a good job after it")
    assert worker.process is not None and worker.process.poll() is None
    client = redis.Redis.from_url(redis_server.url)
    keys = [k.decode(errors="replace") for k in client.scan_iter("*")]
    assert all(len(k) < 300 for k in keys), [k[:80] for k in keys if len(k) >= 300]
    assert not any(job_id in k for k in keys)
    assert standin.paid().get("rawedge1") is None
