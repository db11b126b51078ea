"""Benchmark: the HTTP producer API of `covers web` (requests per second on loopback).

    python -m bench.http_api [--covers 1000] [--batch 500]

Starts its own redis-server and one ``covers web`` (8 threads, COVERS_API_TOKEN set)
on 127.0.0.1; no worker runs, so every job stays queued (the API's own cost is
measured, not Kie's). From one keep-alive connection it sends, one after another:
``--covers`` POST /v1/covers (new music tasks), the same again (idempotent repeats),
``--covers`` GET /v1/covers/{jobId}, and ``--covers`` items as POST /v1/covers/batch
bodies of ``--batch`` items. Prints one line per step: requests, seconds, requests per
second, and for batches items per second. Not a test: figures vary with the machine.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

from bench.common import clean_env, positive_int, start_web, stderr, stop_all
from kie_covers.runtime.redis_server import RedisServer, free_port

CALLBACK = "http://127.0.0.1:9/bench-callback"


def timed(label: str, count: int, step: Callable[[int], None], items: int = 0) -> None:
    """Run `step(i)` for i in range(count) and print the step's figures."""
    started = time.perf_counter()
    for index in range(count):
        step(index)
    seconds = time.perf_counter() - started
    per_item = f"  {items / seconds:8.0f} items/s" if items else ""
    print(f"{label:<34} {count:6d} requests  {seconds:7.2f} s  {count / seconds:8.0f} req/s"
          f"{per_item}", flush=True)


def run(covers: int, batch: int, base: str, token: str) -> None:
    """The four steps against the API at `base`."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    tasks = [uuid.uuid4().hex for _ in range(covers)]
    job_ids: list[str] = []

    def post(index: int) -> None:
        answer = session.post(f"{base}/v1/covers", json={"taskId": tasks[index],
                                                         "callBackUrl": CALLBACK}, timeout=30)
        answer.raise_for_status()
        if len(job_ids) < covers:
            job_ids.append(answer.json()["jobId"])

    def read(index: int) -> None:
        session.get(f"{base}/v1/covers/{job_ids[index]}", timeout=30).raise_for_status()

    batches = [[{"taskId": uuid.uuid4().hex, "callBackUrl": CALLBACK}
                for _ in range(batch)] for _ in range(max(1, covers // batch))]

    def post_batch(index: int) -> None:
        session.post(f"{base}/v1/covers/batch", json={"items": batches[index]},
                     timeout=120).raise_for_status()

    timed("POST /v1/covers (new)", covers, post)
    timed("POST /v1/covers (idempotent repeat)", covers, post)
    timed("GET /v1/covers/{jobId}", covers, read)
    timed(f"POST /v1/covers/batch ({batch} items)", len(batches), post_batch,
          items=batch * len(batches))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, start Redis and ``covers web``, run, stop them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--covers", type=positive_int, default=1000)
    parser.add_argument("--batch", type=positive_int, default=500)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-http-api-"))
    redis_server = RedisServer(work / "redis").start()
    token = secrets.token_hex(16)
    port = free_port()
    env = clean_env({"REDIS_URL": redis_server.url, "COVERS_API_TOKEN": token,
                     "COVERS_QUEUE": "bench-http-api", "KIE_API_KEY": "unused",
                     "COVERS_API_MAX_BATCH": str(args.batch),
                     "COVERS_MAX_API_BYTES": str(max(1_048_576, 200 * args.batch))})
    web = start_web(port, env, work / "web.log")
    try:
        stderr(f"covers web on 127.0.0.1:{port}, redis {redis_server.url}")
        run(args.covers, args.batch, f"http://127.0.0.1:{port}", token)
    finally:
        stop_all([web])
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
