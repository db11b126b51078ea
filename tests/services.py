"""Real services for the tests: worker processes and the callback endpoint.

Nothing here is a mock: workers are ``celery -A kie_covers.worker worker`` processes on
the suite's own Redis server, the endpoint is ``covers web`` under waitress.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import requests

ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def reachable(host: str, port: int) -> bool:
    """True if a TCP server answers on host:port within half a second."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


#: Brokers the end-to-end path runs on: Redis always (the suite starts its own),
#: RabbitMQ when a server listens on 127.0.0.1:5672 (pytest's header says which).
BROKERS = ["redis"] + (["rabbitmq"] if reachable("127.0.0.1", 5672) else [])


def answers(url: str) -> bool:
    """True if a GET of `url` (on loopback) answers below 400 within a second."""
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def healthy(port: int) -> bool:
    """True if ``covers web`` on 127.0.0.1:`port` answers its /healthz."""
    return answers(f"http://127.0.0.1:{port}/healthz")


def scrape_metrics(port: int) -> dict[str, float]:
    """The samples of the Prometheus exporter on 127.0.0.1:`port`, ``name{labels}`` -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def stop_group(process: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """SIGTERM the process group of `process` (started with ``start_new_session=True``);
    SIGKILL it if the process has not ended after `grace_s` seconds. Nothing if it has
    already ended (or was never started)."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_until(predicate: Callable[[], object], timeout_s: float = 20.0,
               interval_s: float = 0.05, message: str = "condition") -> None:
    """Poll `predicate()` until true; fail the test after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")


#: Seconds between a loopback test server's looks for `shutdown()`: stopping one takes
#: about this long (``serve_forever``'s default, 0.5 s, was paid by every test that did).
SERVE_POLL_S = 0.02


def serve_in_thread(server: socketserver.BaseServer) -> None:
    """Run ``server.serve_forever`` in a daemon thread; `stop_server` stops it."""
    threading.Thread(target=server.serve_forever, args=(SERVE_POLL_S,), daemon=True).start()


def stop_server(server: socketserver.BaseServer) -> None:
    """Stop a server started with `serve_in_thread` and close its socket."""
    server.shutdown()
    server.server_close()


class WorkerProcess:
    """One real Celery worker process (prefork, `concurrency` children)."""

    #: Celery options besides queue, pool and name: no gossip, mingle or heartbeats
    #: (the suite's workers need none of them, and start faster without).
    options: tuple[str, ...] = ("--without-gossip", "--without-mingle", "--without-heartbeat")

    def __init__(self, name: str, env: dict[str, str], log_dir: Path,
                 concurrency: int = 2) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def queue(self) -> str:
        """The Celery queue this worker consumes."""
        return self.env["COVERS_QUEUE"]

    def start(self) -> WorkerProcess:
        """Start and wait until the worker is ready to take tasks."""
        self.log_path.write_text("")
        self.process = process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "kie_covers.worker", "worker",
             "-Q", self.env["COVERS_QUEUE"], "-c", str(self.concurrency), "-P", "prefork",
             "-n", f"{self.name}@%h", *self.options, "--loglevel", "INFO",
             "-f", str(self.log_path)],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: "ready." in self.log() or process.poll() is not None,
                   30, 0.1, f"worker {self.name} to start")
        if process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
        return self

    def log(self) -> str:
        """Everything the worker logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker and all its pool children at once."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Warm shutdown; SIGKILL if it does not stop within 20 s."""
        stop_group(self.process, 20)


class WebProcess:
    """``covers web`` on a loopback port."""

    def __init__(self, port: int, env: dict[str, str], log_dir: Path) -> None:
        self.port = port
        self.env = env
        self.log_path = log_dir / f"web-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The callback URL."""
        return f"http://127.0.0.1:{self.port}/kie/callback"

    def start(self) -> WebProcess:
        """Start and wait for /healthz."""
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kie_covers.worker.cli", "web", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: healthy(self.port), 20, 0.1, "callback endpoint")
        return self

    def stop(self) -> None:
        """Stop the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class BeatProcess:
    """A real ``celery beat`` process (its schedule file in the run directory)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.schedule = log_dir / f"{name}-schedule"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BeatProcess:
        """Start and wait until it has begun its schedule."""
        self.log_path.write_text("")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "kie_covers.worker", "beat", "--schedule",
             str(self.schedule), "--loglevel", "INFO", "-f", str(self.log_path)],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: "beat: Starting" in self.log_path.read_text(errors="replace"),
                   30, 0.1, f"beat {self.name}")
        return self

    def stop(self) -> None:
        """Stop it (SIGKILL after 15 s)."""
        stop_group(self.process, 15)


class StartWorker(Protocol):
    """The `start_worker` fixture: start one more worker, stopped after the test.

    Settings are overridden by keyword (``KIE_POLL_INTERVAL="60"``); without `queue`
    the worker gets a queue of its own.
    """

    def __call__(self, queue: str | None = None, **overrides: str) -> WorkerProcess: ...


class StartBeat(Protocol):
    """The `start_beat` fixture: start a beat process, stopped after the test."""

    def __call__(self, **overrides: str) -> BeatProcess: ...
