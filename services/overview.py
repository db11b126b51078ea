"""The cluster overview with this process's Redis and settings (the console's and the
metrics exporter's read model; see `kie_covers.store.overview`)."""

from __future__ import annotations

from kie_covers.config import get_settings
from kie_covers.runtime.connections import Limiters, get_limiters, get_redis
from kie_covers.store.overview import LimiterSpec, Overview, read_overview


def limiter_specs(limiters: Limiters) -> tuple[LimiterSpec, ...]:
    """What the overview reads of this process's limiters (generate, then status)."""
    return tuple(LimiterSpec(limiter.name, limiter.limit, limiter.window_ms / 1000.0)
                 for limiter in (limiters.generate, limiters.status))


def cluster_overview() -> Overview:
    """The whole cluster's overview, read now in one Redis round trip.

    Limits and windows are this process's KIE_RATE_LIMIT and KIE_STATUS_RATE_LIMIT
    (every process should share them); a worker counts as live for COVERS_DEAD_AFTER
    seconds after its last heartbeat (as the takeover of a dead worker's jobs counts).
    """
    return read_overview(get_redis(), limiter_specs(get_limiters()),
                         dead_after_s=get_settings().dead_after)
