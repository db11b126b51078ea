"""Per-process connections: the Redis URL in use, a Redis client, the job store, limiters."""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from kie_covers.config import get_settings
from kie_covers.runtime.full_redis import WaitWhenFull
from kie_covers.runtime.process import per_process
from kie_covers.runtime.redis_server import ensure_private_redis
from kie_covers.store.fair import GENERATE_LIMITER, FairLimiter
from kie_covers.store.jobs import JobStore, Lifetimes
from kie_covers.store.limiter import RateLimiter


@per_process
def redis_url() -> str:
    """``REDIS_URL``, or the private server's URL when it is unset (started if needed)."""
    settings = get_settings()
    if settings.redis_url:
        return settings.redis_url
    url = ensure_private_redis(settings.state_dir)
    # Child processes (and Celery's own config) see the same server.
    os.environ.setdefault("REDIS_URL", url)
    return url


#: Whether this process's Redis client waits out a full Redis (`pause_when_full`).
_waits_when_full = [False]


def pause_when_full() -> None:
    """Make this process (and its forks) wait out a full Redis on every command, logging
    each wait (`kie_covers.runtime.full_redis`), instead of raising. Worker processes
    call it; producers and `covers web` do not (they answer "Redis is full" at once)."""
    _waits_when_full[0] = True
    get_redis.reset()


@per_process
def get_redis() -> redis.Redis:
    """A Redis client for this process (decoded strings)."""
    retry_class = WaitWhenFull if _waits_when_full[0] else Retry
    return redis.Redis.from_url(
        redis_url(), decode_responses=True, health_check_interval=30,
        socket_timeout=10, socket_connect_timeout=5,
        # Ride out a dropped connection or a Redis restart (about 10 s in all)
        # instead of failing the step that was running.
        retry=retry_class(ExponentialBackoff(cap=2.0, base=0.05), 8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError,
                        redis.exceptions.BusyLoadingError],
    )


@dataclass(frozen=True)
class Limiters:
    """The cluster-wide limiters of this process."""

    generate: FairLimiter
    status: RateLimiter


@per_process
def get_limiters() -> Limiters:
    """The limiters (KIE_RATE_LIMIT for generates, handed out fairly by lane and tenant;
    KIE_STATUS_RATE_LIMIT for the rest, in reservation order)."""
    settings = get_settings()
    client = get_redis()
    return Limiters(
        generate=FairLimiter(client, GENERATE_LIMITER, *settings.rate_limit,
                             margin_s=settings.rate_margin, gate_on_credits=True,
                             probe_every_s=settings.maintenance_pause,
                             bulk_min_share=settings.bulk_min_share,
                             park_min_s=settings.redispatch_after),
        status=RateLimiter(client, "status", *settings.status_rate_limit,
                           margin_s=settings.rate_margin),
    )


@per_process
def get_store() -> JobStore:
    """The job store of this process."""
    settings = get_settings()
    return JobStore(get_redis(), Lifetimes(
        result_ttl_s=settings.result_ttl, failure_ttl_s=settings.failure_ttl,
        retry_base_s=settings.retry_base, retry_max_delay_s=settings.retry_max_delay,
        notice_lease_s=settings.notice_lease, notice_lock_s=settings.notice_lock))
