"""The plain baseline of `bench.perf`: the least a Celery task can do to get a cover.

One task, ``plain.cover``: POST generate, GET record-info once, return the
images. No validation, no job record, no lock, no limiter, no polling loop, no
callback handling: the floor the project's pipeline is compared against. The
stand-in finishes covers at once (``cover_seconds=0``), so one record-info is
always enough.

And one trivial task, ``plain.noop``, whose ``.delay()`` is the bare enqueue
`bench.perf` compares ``enqueue_cover`` with.

The app is a stock Celery app (JSON, ``acks_late``, Celery's defaults for the
rest) on one Redis as broker and result backend. It reuses one
`requests.Session` per process (keep-alive), as any sensible client does.

Settings come from the environment, read at import:

- ``REDIS_URL`` (required): broker and result backend.
- ``KIE_BASE_URL`` (required): base URL of the Kie API (the stand-in).
- ``KIE_API_KEY`` (required): Bearer key.
- ``PLAIN_QUEUE``: Celery queue (default ``plain-perf``).

Start workers with ``celery -A bench.plain_perf_app worker -Q plain-perf``.
"""

from __future__ import annotations

import os
from typing import Any

import requests

from bench.common import plain_celery_app, required_env

#: The cover task's registered name.
TASK_NAME = "plain.cover"
#: The trivial task's registered name.
NOOP_NAME = "plain.noop"
#: Seconds for each HTTP call (connect and read).
HTTP_TIMEOUT_S = 20.0


REDIS_URL = required_env("REDIS_URL", "bench.plain_perf_app")
KIE_BASE_URL = required_env("KIE_BASE_URL", "bench.plain_perf_app").rstrip("/")
KIE_API_KEY = required_env("KIE_API_KEY", "bench.plain_perf_app")
QUEUE = os.environ.get("PLAIN_QUEUE", "plain-perf")

app = plain_celery_app("plain-perf", REDIS_URL, QUEUE)

_sessions: dict[int, requests.Session] = {}


def _session() -> requests.Session:
    """One keep-alive session per process (pool children fork; sockets must not be shared)."""
    pid = os.getpid()
    session = _sessions.get(pid)
    if session is None:
        session = _sessions[pid] = requests.Session()
        session.headers["Authorization"] = f"Bearer {KIE_API_KEY}"
    return session


@app.task(name=TASK_NAME)
def cover(taskId: str, callBackUrl: str) -> list[str]:
    """Generate the cover of music task `taskId`; return its image URLs.

    Raises `requests.HTTPError` on an HTTP error status, RuntimeError when Kie
    answers an error code or the cover is not finished at the first look.
    """
    session = _session()
    answer = session.post(f"{KIE_BASE_URL}/api/v1/suno/cover/generate",
                          json={"taskId": taskId, "callBackUrl": callBackUrl},
                          timeout=HTTP_TIMEOUT_S)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    if body.get("code") != 200:
        raise RuntimeError(f"generate answered {body.get('code')}: {body.get('msg')}")
    cover_id = body["data"]["taskId"]
    answer = session.get(f"{KIE_BASE_URL}/api/v1/suno/cover/record-info",
                         params={"taskId": cover_id}, timeout=HTTP_TIMEOUT_S)
    answer.raise_for_status()
    data: dict[str, Any] = answer.json()["data"]
    if data.get("successFlag") != 1:
        raise RuntimeError(f"cover {cover_id} not finished: successFlag "
                           f"{data.get('successFlag')}")
    return list(data["response"]["images"])


@app.task(name=NOOP_NAME)
def noop() -> None:
    """Does nothing; only its enqueue is measured."""
