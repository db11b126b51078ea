"""``covers demo``: the whole pipeline on this machine, no account needed.

Starts (or reuses) Redis, the Kie stand-in, the callback endpoint and one
worker on a queue of its own, enqueues a few covers, shows one progress line
and then a table of the outcomes. It never talks to the real Kie API.

Everything else goes to ``<COVERS_STATE_DIR>/demo.log``: the worker's output
(Celery's banner, its warnings, its logs), this process's logs and notes (where
Redis, the stand-in and the callback endpoint listen). The screen shows the tail
of that file only when something fails. On the way out the demo stops what it
started: the worker, the callback endpoint, the stand-in, and the private Redis
when this run started it, unless ``keep`` is asked for.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from waitress.server import create_server

from kie_covers import enqueue_cover, get_cover
from kie_covers.config import get_settings, load_settings
from kie_covers.core.errors import InvalidPayload
from kie_covers.core.states import JobState
from kie_covers.runtime import logs
from kie_covers.runtime.connections import redis_url
from kie_covers.runtime.redis_server import free_port, start_private_redis, stop_private_redis
from kie_covers.standin import KieStandin, StandinConfig
from kie_covers.worker.table import render
from kie_covers.worker.web import make_app

#: Settings the demo gives itself and its worker (the stand-in's key, fast polls).
DEMO_POLL_INTERVAL_S = "2"
#: The log file's name inside COVERS_STATE_DIR.
LOG_NAME = "demo.log"
#: Lines of the log shown when something fails.
LOG_TAIL_LINES = 40
#: Seconds the worker gets to finish after SIGTERM before it is killed.
WORKER_STOP_S = 15.0
#: Seconds between two looks at the jobs.
WATCH_EVERY_S = 0.3


class Demo:
    """One demo run; `run` does it all (see the module docstring).

    Args:
        count: covers to make.
        timeout_s: seconds to wait for them all to end.
        keep: leave the private Redis running (with the jobs) at the end.
    """

    def __init__(self, count: int, timeout_s: float, keep: bool = False) -> None:
        self.count = count
        self.timeout_s = timeout_s
        self.keep = keep
        # Not get_settings(): it reads the environment once, and the demo sets its own.
        self.state_dir = Path(load_settings().state_dir)
        self.log_path = self.state_dir / LOG_NAME
        self.log: IO[str] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.started_redis = False
        self.web_port = 0

    def note(self, text: str) -> None:
        """Write a line to the demo log (never to the screen)."""
        if self.log is not None:
            self.log.write(f"demo: {text}\n")
            self.log.flush()

    def run(self) -> int:
        """Run the demo; 0 when every cover succeeded, 1 otherwise."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        code = 1
        try:
            with ExitStack() as stack:
                self.log = stack.enter_context(open(self.log_path, "w", buffering=1))
                standin = self._start_standin()
                stack.callback(standin.stop)  # callbacks run last-in first-out
                stack.callback(self._stop_redis)
                self._start_redis()
                stack.enter_context(self._callback_endpoint(self.log))
                stack.enter_context(self._worker(self.log))
                code = self._enqueue_and_watch()
        except KeyboardInterrupt:
            print(flush=True)  # end the progress line; everything started is stopped
            raise
        except Exception:
            if self.worker is not None:  # before that the log holds nothing worth showing
                self._show_log_tail()
            raise
        if code != 0:
            self._show_log_tail()
        return code

    def _start_redis(self) -> None:
        if not get_settings().redis_url:
            _, self.started_redis = start_private_redis(self.state_dir)
        self.note(f"redis: {redis_url()}"
                  + (" (private, started by this run)" if self.started_redis else ""))

    def _stop_redis(self) -> None:
        if self.started_redis and not self.keep:
            stop_private_redis(self.state_dir)
            self.note("stopped the private Redis")

    def _start_standin(self) -> KieStandin:
        api_key = "demo-" + secrets.token_hex(8)
        hmac_key = secrets.token_hex(16)
        standin = KieStandin(StandinConfig(api_keys=(api_key,), cover_seconds=1.5,
                                           webhook_hmac_key=hmac_key)).start()
        self.web_port = free_port()
        os.environ.update({
            "KIE_BASE_URL": standin.base_url,
            "KIE_API_KEY": api_key,
            "KIE_WEBHOOK_HMAC_KEY": hmac_key,
            "KIE_POLL_INTERVAL": DEMO_POLL_INTERVAL_S,
            # A queue of its own, so no other worker on the same Redis takes demo jobs.
            "COVERS_QUEUE": f"covers-demo-{os.getpid()}",
            "COVERS_DISPATCH_INTERVAL": "0.2",
            # The stand-in serves its images on 127.0.0.1, refused by the production
            # default.
            "COVERS_ALLOW_PRIVATE_TARGETS": "1",
            "COVERS_CALLBACK_URL": f"http://127.0.0.1:{self.web_port}/kie/callback",
        })
        get_settings.cache_clear()  # read again, with the demo's settings
        self.note(f"stand-in: {standin.base_url} (Kie API look-alike, no credits spent)")
        return standin

    @contextmanager
    def _callback_endpoint(self, log: IO[str]) -> Iterator[None]:
        # This process's logs (the endpoint's, waitress's) go to the demo log, masked.
        logging.basicConfig(level=logging.INFO, format=logs.FORMAT, force=True,
                            handlers=[logging.StreamHandler(log)])
        logs.install_filter()
        server: Any = create_server(make_app(), host="127.0.0.1", port=self.web_port,
                                    threads=4)
        thread = threading.Thread(target=server.run, name="demo-web", daemon=True)
        thread.start()
        self.note(f"callbacks: {os.environ['COVERS_CALLBACK_URL']}")
        try:
            yield
        finally:
            server.close()

    @contextmanager
    def _worker(self, log: IO[str]) -> Iterator[None]:
        # A session of its own: Ctrl-C reaches only the demo, which stops the worker
        # and its pool processes together, as a group.
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "kie_covers.worker.cli", "worker", "-c", "2",
             "--loglevel", "warning", "-n", f"demo-{os.getpid()}@%h",
             "--without-gossip", "--without-mingle"],
            env=dict(os.environ), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.note(f"worker: pid {self.worker.pid}")
        try:
            yield
        finally:
            _stop_group(self.worker, WORKER_STOP_S)
            self.note(f"worker stopped (exit code {self.worker.returncode})")

    def _enqueue_and_watch(self) -> int:
        try:
            enqueue_cover("not a valid id!", "ftp://nowhere")
        except InvalidPayload as bad:
            self.note(f"bad input is refused before anything is queued: {bad.message}")
        job_ids = [enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/app-callback")
                   for _ in range(self.count)]
        self.note(f"enqueued {len(job_ids)} covers")
        records = self._watch(job_ids)
        # The job ids in full only when the jobs outlive the demo (`covers status` them).
        id_width = 8 if self.started_redis and not self.keep else None
        rows = [[r["job_id"][:id_width], r["music_task_id"][:12], r["state"],
                 " ".join(r["images"]) or (r["error"] or {}).get("message", "")]
                for r in records]
        print(render(["job", "music task", "state", "images"], rows), flush=True)
        return 0 if all(r["state"] == JobState.SUCCEEDED for r in records) else 1

    def _watch(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """Show one progress line until every job ended, the worker died, or the
        time is up; return the last records read."""
        deadline = time.monotonic() + self.timeout_s
        shown = ""
        while True:
            records = [get_cover(j) for j in job_ids]
            states = Counter(r["state"] for r in records)
            line = ", ".join(f"{states[s]} {s}" for s in JobState)
            if line != shown:  # rewritten in place; a new text only when it changed
                print(f"\r  {line}   ", end="", flush=True)
                shown = line
            done = sum(states[s] for s in JobState if s.final) == len(job_ids)
            worker_code = self.worker.poll() if self.worker is not None else None
            if done or worker_code is not None or time.monotonic() > deadline:
                if worker_code is not None:
                    self.note(f"the worker exited early (exit code {worker_code})")
                elif not done:
                    self.note(f"not every cover ended within {self.timeout_s:g} s")
                print(flush=True)
                return records
            time.sleep(WATCH_EVERY_S)

    def _show_log_tail(self) -> None:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        print(f"covers demo: not every cover succeeded; the last {LOG_TAIL_LINES} lines "
              f"of {self.log_path}:", file=sys.stderr)
        for line in lines[-LOG_TAIL_LINES:]:
            print(f"  {line}", file=sys.stderr)


def _stop_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM `process`'s process group (it leads one), SIGKILL it after `timeout_s`
    seconds; then SIGKILL whatever of the group is left (a pool process orphaned by a
    worker that died)."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout_s)


def run_demo(count: int, timeout_s: float, keep: bool = False) -> int:
    """Run the demo with `count` covers, waiting at most `timeout_s` seconds; returns 0
    when all succeeded. With `keep`, the private Redis it started keeps running."""
    return Demo(count, timeout_s, keep).run()
