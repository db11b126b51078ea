"""A private, real Redis server for the demo, development and the tests.

When ``REDIS_URL`` is unset, `ensure_private_redis` starts the system's
``redis-server`` (found on PATH) bound to 127.0.0.1 on a free port, with its
files under ``COVERS_STATE_DIR``, and reuses it from every process of the same
project directory (a file lock keeps two processes from starting two). It never
falls back to a server nobody pointed it at, and never to a mock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from kie_covers.config import SettingsError

#: Seconds to wait for a started server to answer PING.
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary, or a `SettingsError` saying what to do."""
    path = shutil.which("redis-server")
    if path is None:
        raise SettingsError(
            "REDIS_URL is not set and no redis-server was found on PATH: install Redis "
            "(e.g. `apt install redis-server` or `brew install redis`) or set REDIS_URL"
        )
    return path


class RedisServer:
    """One redis-server process owned by this project.

    Args:
        directory: where its data (append-only file), pid file and log go.
        port: TCP port on 127.0.0.1 (default: a free one).
        appendonly: keep an append-only file so a restart loses nothing (default True).
    """

    def __init__(self, directory: str | os.PathLike[str], port: int | None = None,
                 appendonly: bool = True) -> None:
        self.directory = Path(directory).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, daemonize: bool) -> list[str]:
        """The redis-server command line."""
        return [
            find_redis_server(),
            "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.directory),
            "--pidfile", str(self.directory / "redis.pid"),
            "--logfile", str(self.directory / "redis.log"),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "yes" if daemonize else "no",
        ]

    def start(self, daemonize: bool = False) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if daemonize:
            subprocess.run(self.command(True), check=True, stdout=subprocess.DEVNULL)
        else:
            self.process = subprocess.Popen(self.command(False), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until PING succeeds, or raise RuntimeError after `timeout_s` seconds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        log = self.directory / "redis.log"
        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
        raise RuntimeError(f"redis-server on port {self.port} did not start: {tail}")

    def ping(self) -> bool:
        """True if the server answers."""
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self, hard: bool = False) -> None:
        """Stop the server: SIGTERM (it writes its files) or SIGKILL when `hard`."""
        sig = signal.SIGKILL if hard else signal.SIGTERM
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            self.process.wait(timeout=10)
            self.process = None
            return
        pid_file = self.directory / "redis.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), sig)

    def restart(self, hard: bool = False) -> None:
        """Stop and start again on the same port and directory."""
        self.stop(hard=hard)
        deadline = time.monotonic() + 10
        while self.ping() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()


def ensure_private_redis(state_dir: str) -> str:
    """URL of this project's private Redis under `state_dir`, started if not running."""
    directory = Path(state_dir).resolve() / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "port"
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if port_file.exists():
            server = RedisServer(directory, int(port_file.read_text().strip()))
            pid_file = directory / "redis.pid"
            if pid_file.exists() and server.ping():
                return server.url
        server = RedisServer(directory)
        server.start(daemonize=True)
        port_file.write_text(str(server.port))
        return server.url
