"""Celery settings, derived from `kie_covers.config.get_settings()` (loaded lazily by the app).

What the reliability promise relies on, and operators must not change:
late acks with requeue on worker loss, prefetch of one, JSON only.
"""

from kie_covers.config import get_settings
from kie_covers.runtime.connections import redis_url

_settings = get_settings()
_redis = redis_url()

broker_url = _settings.broker_url or _redis
result_backend = _redis
broker_connection_retry_on_startup = True
# Redis broker: an unacked message returns to the queue after this many seconds.
# The heartbeats (COVERS_DEAD_AFTER, `kie_covers.store.liveness`) send a dead worker's
# jobs again within seconds; the copy that returns an hour later finds its job ended or
# moved on (a harmless extra look).
broker_transport_options = {"visibility_timeout": 3600}
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_default_queue = _settings.queue
task_routes: dict[str, dict[str, str]] = {"covers.*": {"queue": _settings.queue}}

beat_schedule = {
    "retry-failed-covers": {
        "task": "covers.retry_failures",
        "schedule": _settings.retry_interval,
        # The round's lock must match this beat's interval, not the worker's setting.
        "kwargs": {"interval_s": _settings.retry_interval},
        "options": {"expires": _settings.retry_interval},
    },
}

result_expires = int(_settings.result_ttl)
result_extended = True
# Task events cost ~10% of worker CPU and ~17% of each enqueue (bench/perf.py), so
# they are off until a monitor asks: Flower turns them on when it starts (or run
# `celery -A worker control enable_events`).
task_send_sent_event = False
worker_send_task_events = False
worker_hijack_root_logger = True
enable_utc = True
