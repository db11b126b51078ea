"""Metrics, kept in Redis so every worker process on every host adds to the same numbers.

One exporter (`covers metrics`, `kie_covers.worker.metrics_server`) reads them and serves
Prometheus's text format; no multiprocess directory, no per-process scrape
targets. Collection is off unless ``COVERS_METRICS_PORT`` is set; then each
update is one Redis ``HINCRBY``/``HINCRBYFLOAT`` pipeline.

Names (all prefixed ``covers_``):

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
"""

from __future__ import annotations

import logging

import redis

from kie_covers.config import get_settings, keys
from kie_covers.runtime.connections import get_redis

log = logging.getLogger("covers.metrics")

#: Upper bounds (seconds) of the job-duration histogram's buckets.
DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

#: Help text of every metric, by name (the exporter uses it).
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


def _field(name: str, labels: dict[str, object]) -> str:
    inner = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return f"{name}|{inner}"


def enabled() -> bool:
    """True when COVERS_METRICS_PORT is set."""
    return get_settings().metrics_port is not None


def _client() -> redis.Redis:
    return get_redis()


def inc(name: str, amount: float = 1, **labels: object) -> None:
    """Add `amount` to counter `name` with `labels` (no-op when metrics are off)."""
    if not enabled():
        return
    try:
        if float(amount).is_integer():
            _client().hincrby(keys.METRIC_COUNTERS, _field(name, labels), int(amount))
        else:
            _client().hincrbyfloat(keys.METRIC_COUNTERS, _field(name, labels), amount)
    except redis.RedisError:  # metrics must never break a job
        log.debug("metric %s not recorded", name, exc_info=True)


def observe(name: str, value: float) -> None:
    """Record `value` (seconds) in histogram `name` (no-op when metrics are off)."""
    if not enabled():
        return
    try:
        pipe = _client().pipeline(transaction=False)
        key = keys.metric_histogram(name)
        for bound in DURATION_BUCKETS_S:
            if value <= bound:
                pipe.hincrby(key, f"le={bound:g}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", value)
        pipe.execute()
    except redis.RedisError:
        log.debug("metric %s not recorded", name, exc_info=True)


def set_gauge(name: str, value: float) -> None:
    """Set gauge `name` to `value` for the whole cluster (no-op when metrics are off).

    The newest value written by any process wins: gauges here say what the last
    check saw, not a sum over processes.
    """
    if not enabled():
        return
    try:
        _client().hset(keys.METRIC_GAUGES, name, value)
    except redis.RedisError:  # metrics must never break a worker
        log.debug("metric %s not recorded", name, exc_info=True)
