"""``covers demo``: the whole pipeline on this machine, no account needed.

Starts (or reuses) Redis, the Kie stand-in, the callback endpoint and one
worker on a queue of its own, enqueues a few covers, shows progress, prints the
outcomes and stops what it started. It never talks to the real Kie API.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

from waitress.server import create_server

from kie_covers import enqueue_cover, get_cover
from kie_covers.core.errors import InvalidPayload
from kie_covers.core.states import JobState
from kie_covers.runtime.connections import redis_url
from kie_covers.runtime.redis_server import free_port
from kie_covers.standin import KieStandin, StandinConfig
from kie_covers.worker.table import render
from kie_covers.worker.web import make_app

#: Settings the demo gives itself and its worker (the stand-in's key, fast polls).
DEMO_POLL_INTERVAL_S = "2"


def _serve_web(port: int) -> threading.Thread:
    server = create_server(make_app(), host="127.0.0.1", port=port, threads=4)
    thread = threading.Thread(target=server.run, name="demo-web", daemon=True)
    thread.start()
    return thread


def run_demo(count: int, timeout_s: float) -> int:
    """Run the demo with `count` covers; returns 0 when all succeeded."""
    api_key = "demo-" + secrets.token_hex(8)
    hmac_key = secrets.token_hex(16)
    standin = KieStandin(StandinConfig(api_keys=(api_key,), cover_seconds=1.5,
                                       webhook_hmac_key=hmac_key)).start()
    web_port = free_port()
    os.environ.update({
        "KIE_BASE_URL": standin.base_url,
        "KIE_API_KEY": api_key,
        "KIE_WEBHOOK_HMAC_KEY": hmac_key,
        "KIE_POLL_INTERVAL": DEMO_POLL_INTERVAL_S,
        "COVERS_CALLBACK_URL": f"http://127.0.0.1:{web_port}/kie/callback",
        # A queue of its own, so no other worker on the same Redis takes demo jobs.
        "COVERS_QUEUE": f"covers-demo-{os.getpid()}",
        "COVERS_DISPATCH_INTERVAL": "0.2",
        # The stand-in serves its images on 127.0.0.1, refused by the production default.
        "COVERS_ALLOW_PRIVATE_TARGETS": "1",
    })
    print(f"redis:      {redis_url()}")
    print(f"stand-in:   {standin.base_url} (Kie API look-alike, no credits spent)")
    _serve_web(web_port)
    print(f"callbacks:  {os.environ['COVERS_CALLBACK_URL']}")
    worker = subprocess.Popen(
        [sys.executable, "-m", "kie_covers.worker.cli", "worker", "-c", "2",
         "--loglevel", "warning",
         "-n", f"demo-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
        env=dict(os.environ),
    )
    try:
        return _enqueue_and_watch(count, timeout_s)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        standin.stop()


def _enqueue_and_watch(count: int, timeout_s: float) -> int:
    try:
        enqueue_cover("not a valid id!", "ftp://nowhere")
    except InvalidPayload as bad:
        print(f"bad input is refused before anything is queued:\n  {bad.message}")
    job_ids = [enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/app-callback")
               for _ in range(count)]
    print(f"enqueued {len(job_ids)} covers")
    deadline = time.monotonic() + timeout_s
    records = [get_cover(j) for j in job_ids]
    while time.monotonic() < deadline:
        records = [get_cover(j) for j in job_ids]
        states = Counter(r["state"] for r in records)
        line = ", ".join(f"{states[s]} {s}" for s in JobState)
        print(f"\r  {line}   ", end="", flush=True)
        if sum(states[s] for s in JobState if s.final) == len(job_ids):
            break
        time.sleep(0.3)
    print()
    rows = [[r["job_id"][:8], r["music_task_id"][:12], r["state"],
             " ".join(r["images"]) or
             (r["error"] or {}).get("message", "")] for r in records]
    print(render(["job", "music task", "state", "images"], rows))
    ok = all(r["state"] == JobState.SUCCEEDED for r in records)
    print("all covers made" if ok else "some covers did not finish")
    return 0 if ok else 1
