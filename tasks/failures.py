"""The beat's task: a round of scheduled retries of failed covers (`covers.retry_failures`)."""

from __future__ import annotations

import logging

from kie_covers.runtime.app import app
from kie_covers.runtime.messages import RETRY_TASK
from kie_covers.services.failures import run_retry_round

log = logging.getLogger("covers.failures")


@app.task(name=RETRY_TASK, ignore_result=True)
def retry_failures(interval_s: float | None = None) -> dict[str, int]:
    """Beat task: `run_retry_round` (every COVERS_RETRY_INTERVAL seconds of the beat)."""
    if interval_s is not None and not (isinstance(interval_s, int | float) and interval_s > 0):
        log.warning("retry_failures: ignoring bad interval_s %r", interval_s)
        interval_s = None
    return run_retry_round(interval_s=interval_s)
