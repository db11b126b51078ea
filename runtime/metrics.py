"""Metrics, kept in Redis so every process on every host adds to the same numbers.

One exporter (`covers metrics`, `kie_covers.worker.metrics_server`) reads them and serves
Prometheus's text format; no multiprocess directory, no per-process scrape
targets. Counting is always on, in every process, whatever its settings
(``COVERS_METRICS_PORT`` is only the exporter's port): each update is one Redis
``HINCRBY``. Endings are counted by the step that ends the job
(`kie_covers.store.jobs.JobStore.finish`), so each is counted exactly once by
whichever process (a worker, `covers web`) ended it.

Counters (all prefixed ``covers_``; the layout is `kie_covers.store.counters`):

- ``jobs_ended_total{state, kind}``: jobs that ended, by end state and error kind
- ``api_answers_total{endpoint, code}``: Kie answers by endpoint and code (``network``
  for no answer)
- ``job_duration_seconds``: histogram, enqueue to end
- ``limiter_waits_total{reason}``, ``limiter_wait_seconds_total{reason}``: times a job
  was told to wait by the cluster-wide limiter, and for how long in all
- ``pauses_total{reason}``: cluster-wide pauses (429, 455) and credit holds started
- ``images_stored_total``, ``image_bytes_stored_total``: cover images copied to the store
- ``quarantined_total{reason}``: poison broker entries moved to the quarantine
- ``callback_endpoint_up``: gauge, 1 when COVERS_CALLBACK_URL's ``/healthz`` answered
  the newest check of any worker, 0 when it did not (absent without a callback URL)

The gauges of the cluster's state (jobs by state, waits, limiter use, ...) are read
from Redis at scrape time by the exporter (`kie_covers.store.overview`).
"""

from __future__ import annotations

import logging

import redis

from kie_covers.config import keys
from kie_covers.runtime.connections import get_redis
from kie_covers.store.counters import DURATION_BUCKETS_S, field

log = logging.getLogger("covers.metrics")

__all__ = ["DURATION_BUCKETS_S", "GAUGES", "HELP", "inc", "set_gauge"]

#: Help text of every metric kept in Redis, by name (the exporter uses it).
HELP = {
    "jobs_ended_total": "Cover jobs that ended, by end state and error kind.",
    "api_answers_total": "Kie API answers, by endpoint and answer code.",
    "job_duration_seconds": "Seconds from enqueue to the end of a job.",
    "limiter_waits_total": "Times the cluster-wide limiter told a job to wait, by reason.",
    "limiter_wait_seconds_total": "Seconds of limiter waits handed out, by reason.",
    "pauses_total": "Cluster-wide pauses and credit holds started, by reason.",
    "images_stored_total": "Cover images copied to the image store.",
    "image_bytes_stored_total": "Bytes of cover images copied to the image store.",
    "quarantined_total": "Poison broker entries moved to the quarantine, by reason.",
    "callback_endpoint_up": "1 when COVERS_CALLBACK_URL's /healthz answered a worker's "
                            "newest check, 0 when it did not.",
}
#: The metrics above that are gauges (kept in `keys.METRIC_GAUGES`, not counted).
GAUGES = frozenset({"callback_endpoint_up"})


def _client() -> redis.Redis:
    return get_redis()


def inc(name: str, amount: float = 1, **labels: object) -> None:
    """Add `amount` to counter `name` with `labels` (always; never raises)."""
    try:
        if float(amount).is_integer():
            _client().hincrby(keys.METRIC_COUNTERS, field(name, labels), int(amount))
        else:
            _client().hincrbyfloat(keys.METRIC_COUNTERS, field(name, labels), amount)
    except redis.RedisError:  # metrics must never break a job
        log.debug("metric %s not recorded", name, exc_info=True)


def set_gauge(name: str, value: float) -> None:
    """Set gauge `name` to `value` for the whole cluster (always; never raises).

    The newest value written by any process wins: gauges here say what the last
    check saw, not a sum over processes.
    """
    try:
        _client().hset(keys.METRIC_GAUGES, name, value)
    except redis.RedisError:  # metrics must never break a worker
        log.debug("metric %s not recorded", name, exc_info=True)
