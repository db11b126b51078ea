"""The `covers` command and the Procfile lines (the demo: tests/test_demo.py)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import redis

from kie_covers import enqueue_cover, wait_for_cover
from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.standin import KieStandin
from tests.conftest import API_KEY, HMAC_KEY, process_env
from tests.services import ROOT, WorkerProcess, healthy, wait_until

pytestmark = pytest.mark.e2e


def covers(*args: str, env: dict[str, str] | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    # check=False: the tests read the exit code themselves.
    return subprocess.run([sys.executable, "-m", "kie_covers.worker.cli", *args], check=False,
                          cwd=ROOT, env=env or process_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_enqueue_wait_and_status(standin: KieStandin, worker: WorkerProcess) -> None:
    task_id = uuid.uuid4().hex
    done = covers("enqueue", task_id, "http://127.0.0.1:9/cb", "--wait", "--timeout", "30",
                  "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "succeeded" and len(record["images"]) == 2
    shown = covers("status", record["job_id"])
    assert shown.returncode == 0
    assert record["job_id"] in shown.stdout and "succeeded" in shown.stdout
    missing = covers("status", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no cover job" in missing.stderr


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip())


def _expand(command: str, env: dict[str, str]) -> list[str]:
    expanded = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], env=env,
                              capture_output=True, text=True, check=True).stdout
    return [part for part in expanded.split("\0") if part]


def test_the_procfile_lines_run_as_written(standin: KieStandin, run_dir: Path) -> None:
    procfile = _procfile()
    assert set(procfile) == {"worker", "beat", "web"}
    port = free_port()
    queue = f"covers-procfile-{uuid.uuid4().hex[:6]}"
    # PORT as a Procfile runner sets it, on another port: the web line ignores it.
    env = process_env(PORT=str(free_port()), COVERS_WEB_PORT=str(port), COVERS_QUEUE=queue,
                      WORKER_CONCURRENCY="1",
                      COVERS_STATE_DIR=str(run_dir / "procfile"),
                      COVERS_CALLBACK_URL=f"http://127.0.0.1:{port}/kie/callback",
                      PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in procfile.items():
            argv = _expand(command.strip(), env)
            assert argv[0] == "covers", f"{name}: {shlex.join(argv)}"
            processes[name] = subprocess.Popen(
                argv, cwd=ROOT, env=env,
                stdout=open(run_dir / f"procfile-{name}.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: healthy(port), 20, 0.1, "web line")
        task_id = uuid.uuid4().hex
        record = wait_for_cover(enqueue_cover(task_id, "http://127.0.0.1:9/cb", queue=queue),
                                timeout_s=40)
        assert record["state"] == "succeeded"
        assert processes["beat"].poll() is None, (run_dir / "procfile-beat.log").read_text()
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)



def _as_bytes(value: object) -> bytes:
    """A stored value as bytes (a hash item as ``field=value``)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, tuple | list):
        return b"=".join(_as_bytes(part) for part in value)
    return b"" if value is None else str(value).encode()


def _all_redis_text(url: str) -> str:
    """Every string, hash, list, sorted set and set stored in Redis, as one text."""
    client = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in client.scan_iter():
        kind = client.type(key)
        values: Iterable[object] = ()
        if kind == b"string":
            values = [client.get(key)]
        elif kind == b"hash":
            values = client.hgetall(key).items()
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"set":
            values = client.smembers(key)
        parts.extend(_as_bytes(value) for value in values)
    return b"\n".join(parts).decode("utf-8", "replace")


def test_no_secret_reaches_the_logs_or_the_stored_records(
    standin: KieStandin, worker: WorkerProcess, run_dir: Path, redis_server: RedisServer
) -> None:
    standin.inject("generate", "401", times=1)
    standin.inject("generate", "reset", times=1)
    for fault in ("429", "455", "500", "html", "malformed"):
        standin.inject("any", fault, times=1)
    for _ in range(2):
        wait_for_cover(enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/cb"), timeout_s=20)
    record = wait_for_cover(enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/cb"),
                            timeout_s=20)
    assert record["state"] == "succeeded"
    logs = "".join(p.read_text(errors="replace") for p in run_dir.glob("*.log"))
    assert "401" in logs or "unauthorized" in logs  # the logs are really there
    assert API_KEY not in logs
    assert HMAC_KEY not in logs
    stored = _all_redis_text(redis_server.url)
    assert "unauthorized" in stored  # the failure record is there
    assert API_KEY not in stored
    assert HMAC_KEY not in stored
