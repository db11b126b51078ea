"""The repository's Procfile under honcho, with the README's `.env`: covers end by callback.

Procfile runners set PORT for each process (honcho: 5000 + 100 x the line's index),
so a web line that listened on $PORT moved away from COVERS_CALLBACK_URL and every
cover waited for its poll. Here the poll interval is 60 s and the test waits less,
so only Kie's callback, through the web line, can end the cover in time.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from kie_covers.config import keys
from kie_covers.runtime.redis_server import RedisServer, free_port
from kie_covers.standin import KieStandin
from tests.conftest import API_KEY, HMAC_KEY
from tests.services import ROOT, healthy, wait_until

pytestmark = pytest.mark.e2e

#: Redis database of this test's processes (the suite's workers use database 0 and
#: the in-process tests 9 to 11), emptied before and after.
HONCHO_DB = 12
#: Seconds between polls in this test: longer than it waits, so a poll cannot end
#: the cover; only the callback can.
POLL_INTERVAL_S = 60
#: Seconds the test waits for the cover (the callback comes about 0.3 s after submit).
COVER_WAIT_S = 45
BIN = Path(sys.executable).parent


def readme_dotenv() -> dict[str, str]:
    """The README's `.env` example (its ```dotenv block), as KEY -> value."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```dotenv\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) == 1, "the README has one .env example"
    pairs = [line.split("=", 1) for line in blocks[0].splitlines()
             if line.strip() and not line.startswith("#")]
    return {name.strip(): value.strip() for name, value in pairs}


def with_port(url: str, port: int) -> str:
    """`url` with its port replaced by `port`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))


def dotenv_for_this_machine(redis_server: RedisServer, standin: KieStandin, web_port: int,
                            run_dir: Path) -> dict[str, str]:
    """The README's `.env`, with what differs on this machine: the suite's Redis and
    stand-in, its key, a free port for the web line; plus the test's own settings."""
    env = readme_dotenv()
    assert {"REDIS_URL", "KIE_API_KEY", "KIE_BASE_URL", "COVERS_WEB_PORT",
            "COVERS_CALLBACK_URL"} <= set(env)
    # The README's example agrees with itself: the callback URL names the web's port.
    assert urlsplit(env["COVERS_CALLBACK_URL"]).port == int(env["COVERS_WEB_PORT"])
    env.update({
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{HONCHO_DB}",
        "KIE_API_KEY": API_KEY,
        "KIE_BASE_URL": standin.base_url,
        "COVERS_WEB_PORT": str(web_port),
        "COVERS_CALLBACK_URL": with_port(env["COVERS_CALLBACK_URL"], web_port),
        # The suite's stand-in signs its callbacks; the web line checks them.
        "KIE_WEBHOOK_HMAC_KEY": HMAC_KEY,
        "KIE_POLL_INTERVAL": str(POLL_INTERVAL_S),
        "KIE_POLL_TIMEOUT": "300",
        "COVERS_METRICS_PORT": str(free_port()),  # workers then write the gauge
        "COVERS_STATE_DIR": str(run_dir / "state"),
        "WORKER_CONCURRENCY": "1",
    })
    return env



def _shows(log_path: Path, line: str) -> bool:
    return line in log_path.read_text()


def _gauge(client: redis.Redis) -> float | None:
    """covers_callback_endpoint_up as the workers wrote it (None: not yet)."""
    value = client.hget(keys.METRIC_GAUGES, "callback_endpoint_up")
    return None if value is None else float(str(value))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to honcho's process group (it stops its processes), SIGKILL if stuck."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_honcho_with_the_readme_env_ends_a_cover_by_callback(
    standin: KieStandin, redis_server: RedisServer, tmp_path: Path
) -> None:
    web_port = free_port()
    dotenv = dotenv_for_this_machine(redis_server, standin, web_port, tmp_path)
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    # Only the .env configures the processes: no setting of this test process leaks in.
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONUNBUFFERED": "1"}
    honcho = [str(BIN / "honcho"), "-d", str(tmp_path), "-f", str(ROOT / "Procfile")]
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=HONCHO_DB,
                         decode_responses=True)
    client.flushdb()
    log_path = tmp_path / "honcho.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*honcho, "start"], cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: healthy(web_port) or process.poll() is not None, 60, 0.2,
                   "the web line on COVERS_WEB_PORT")
        assert process.poll() is None, log_path.read_text()
        # honcho gave the web line PORT=5200; it listens where the callback URL points.
        # `honcho run` runs the command with the same .env, as a person would.
        done = subprocess.run(
            [*honcho, "run", "covers", "enqueue", uuid.uuid4().hex, "http://127.0.0.1:9/cb",
             "--wait", "--timeout", str(COVER_WAIT_S), "--json"],
            check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=COVER_WAIT_S + 60)
        assert done.returncode == 0, done.stdout + done.stderr + log_path.read_text()
        record = json.loads(done.stdout)
        assert record["state"] == "succeeded"
        assert record["polls"] == 0  # ended by the callback, not by a poll
        wait_until(lambda: _gauge(client) == 1.0, 30, 0.2, "the worker's callback check")
        # honcho relays each process's lines as they come: wait for them.
        for line in ("succeeded by callback", "COVERS_CALLBACK_URL answers"):
            wait_until(functools.partial(_shows, log_path, line), 30, 0.2,
                       f"{line!r} in honcho's output")
        assert "does not answer" not in log_path.read_text()
    finally:
        _stop(process)
        client.flushdb()
        client.close()
    assert not healthy(web_port)  # honcho stopped the web line with itself
