"""What a typical app writes: a plain Celery task that gets a Suno cover from Kie.

This is the baseline `bench.rate_limit` measures the project against. The
account's limit (20 generations per 2 s in the benchmark) is written as Celery's
``rate_limit="10/s"``, which Celery applies per worker process, and Kie's 429
is handled by Celery's ``autoretry_for`` with exponential backoff. The task
submits, then sleeps and polls record-info every second until the cover is done,
holding its worker slot the whole time.

Settings come from the environment, read at import:

- ``REDIS_URL`` (required): broker and result backend.
- ``KIE_BASE_URL`` (required): base URL of the Kie API (the stand-in).
- ``KIE_API_KEY`` (required): Bearer key.
- ``PLAIN_QUEUE``: Celery queue (default ``plain``).
- ``PLAIN_RATE_LIMIT``: Celery's per-worker rate limit (default ``10/s``).

Start workers with ``celery -A bench.plain_app worker -Q plain -c 1``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import requests

from bench.common import plain_celery_app, required_env

#: The task's registered name.
TASK_NAME = "plain.generate_cover"
#: Seconds between record-info polls.
POLL_INTERVAL_S = 1.0
#: Seconds after the generate before the task gives up waiting for the cover.
POLL_TIMEOUT_S = 300.0
#: Seconds for each HTTP call (connect and read).
HTTP_TIMEOUT_S = 20.0


REDIS_URL = required_env("REDIS_URL", "bench.plain_app")
KIE_BASE_URL = required_env("KIE_BASE_URL", "bench.plain_app").rstrip("/")
KIE_API_KEY = required_env("KIE_API_KEY", "bench.plain_app")
QUEUE = os.environ.get("PLAIN_QUEUE", "plain")
RATE_LIMIT = os.environ.get("PLAIN_RATE_LIMIT", "10/s")

app = plain_celery_app("plain", REDIS_URL, QUEUE)


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KIE_API_KEY}"}


@app.task(
    name=TASK_NAME,
    rate_limit=RATE_LIMIT,
    autoretry_for=(requests.HTTPError, requests.ConnectionError),
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=8,
)
def generate_cover(taskId: str, callBackUrl: str) -> list[str]:
    """Generate the cover of music task `taskId` and return its image URLs.

    Raises `requests.HTTPError` on any HTTP error status (429 included; Celery
    retries it), RuntimeError when Kie answers an error code or the cover fails,
    TimeoutError when the cover is not done after POLL_TIMEOUT_S seconds.
    """
    answer = requests.post(f"{KIE_BASE_URL}/api/v1/suno/cover/generate",
                           json={"taskId": taskId, "callBackUrl": callBackUrl},
                           headers=_headers(), timeout=HTTP_TIMEOUT_S)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    if body.get("code") != 200:
        raise RuntimeError(f"generate answered {body.get('code')}: {body.get('msg')}")
    cover_id = body["data"]["taskId"]
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        time.sleep(POLL_INTERVAL_S)
        answer = requests.get(f"{KIE_BASE_URL}/api/v1/suno/cover/record-info",
                              params={"taskId": cover_id}, headers=_headers(),
                              timeout=HTTP_TIMEOUT_S)
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()["data"]
        flag = data.get("successFlag")
        if flag == 1:
            return list(data["response"]["images"])
        if flag == 3:
            raise RuntimeError(f"cover {cover_id} failed: {data.get('errorMessage')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"cover {cover_id} not done after {POLL_TIMEOUT_S:g}s")
