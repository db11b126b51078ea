"""Per-process connections: the Redis URL in use, a Redis client, the job store."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from kie_covers.config import get_settings
from kie_covers.runtime.redis_server import ensure_private_redis
from kie_covers.store.jobs import JobStore
from kie_covers.store.limiter import RateLimiter


@functools.cache
def redis_url() -> str:
    """``REDIS_URL``, or the private server's URL when it is unset (started if needed)."""
    settings = get_settings()
    if settings.redis_url:
        return settings.redis_url
    url = ensure_private_redis(settings.state_dir)
    # Child processes (and Celery's own config) see the same server.
    os.environ.setdefault("REDIS_URL", url)
    return url


_clients: dict[int, redis.Redis] = {}


def get_redis() -> redis.Redis:
    """A Redis client for this process (decoded strings), made once per pid."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        client = _clients[pid] = redis.Redis.from_url(
            redis_url(), decode_responses=True, health_check_interval=30,
            socket_timeout=10, socket_connect_timeout=5,
            # Ride out a dropped connection or a Redis restart (about 10 s in all)
            # instead of failing the step that was running.
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 8),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError,
                            redis.exceptions.BusyLoadingError],
        )
    return client


@dataclass(frozen=True)
class Limiters:
    """The cluster-wide limiters of this process."""

    generate: RateLimiter
    status: RateLimiter


_limiters: dict[int, Limiters] = {}


def get_limiters() -> Limiters:
    """The limiters (KIE_RATE_LIMIT for generates, KIE_STATUS_RATE_LIMIT for the rest)."""
    pid = os.getpid()
    found = _limiters.get(pid)
    if found is None:
        settings = get_settings()
        client = get_redis()
        found = _limiters[pid] = Limiters(
            generate=RateLimiter(client, "generate", *settings.rate_limit,
                                 margin_s=settings.rate_margin, gate_on_credits=True,
                                 probe_every_s=settings.maintenance_pause),
            status=RateLimiter(client, "status", *settings.status_rate_limit,
                               margin_s=settings.rate_margin),
        )
    return found


_stores: dict[int, JobStore] = {}


def get_store() -> JobStore:
    """The job store of this process."""
    pid = os.getpid()
    store = _stores.get(pid)
    if store is None:
        settings = get_settings()
        store = _stores[pid] = JobStore(get_redis(), settings.result_ttl, settings.failure_ttl,
                                        settings.retry_base, settings.retry_max_delay,
                                        settings.notice_lease, settings.notice_lock)
    return store
