"""The Prometheus endpoint: one exporter for the whole cluster, reading Redis.

Every process on every host adds to counters in Redis (`kie_covers.runtime.metrics`,
always on); `RedisCollector` turns them into Prometheus metrics on each scrape, and
`kie_covers.worker.cluster_gauges.ClusterCollector` adds the cluster's state (jobs by
state, waits, limiter, pause, credits, workers) read from Redis at that moment. Run it
with ``covers metrics`` (port ``COVERS_METRICS_PORT``, path ``/metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from kie_covers.config import keys
from kie_covers.runtime.connections import get_redis
from kie_covers.runtime.metrics import DURATION_BUCKETS_S, GAUGES, HELP
from kie_covers.services.overview import cluster_overview
from kie_covers.store.counters import bucket_name, parse_field
from kie_covers.store.overview import Overview
from kie_covers.store.reindex import index_existing
from kie_covers.worker.cluster_gauges import ClusterCollector

PREFIX = "covers_"

log = logging.getLogger("covers.metrics")


class RedisCollector(Collector):
    """Prometheus collector over the counters and histograms kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def collect(self) -> Iterator[Any]:
        raw: dict[str, str] = self.redis.hgetall(keys.METRIC_COUNTERS)  # type: ignore[assignment]
        families: dict[str, CounterMetricFamily] = {}
        for field, value in sorted(raw.items()):
            name, labels = parse_field(field)
            base = name.removesuffix("_total")
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(
                    PREFIX + base, HELP.get(name, name), labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], float(value))
        for name in sorted(HELP):
            if name.endswith("_total") and name not in families:
                # Always expose the known counters, so dashboards see zeros, not gaps.
                families[name] = CounterMetricFamily(PREFIX + name.removesuffix("_total"),
                                                     HELP[name])
                if name in ("images_stored_total", "image_bytes_stored_total"):
                    families[name].add_metric([], 0.0)
        yield from families.values()
        hist: dict[str, str] = self.redis.hgetall(  # type: ignore[assignment]
            keys.metric_histogram("job_duration_seconds"))
        buckets = [(bucket_name(b), float(hist.get(f"le={bucket_name(b)}", 0)))
                   for b in DURATION_BUCKETS_S]
        count = float(hist.get("count", 0))
        buckets.append(("+Inf", count))
        histogram = HistogramMetricFamily(PREFIX + "job_duration_seconds",
                                          HELP["job_duration_seconds"])
        histogram.add_metric([], buckets, sum_value=float(hist.get("sum", 0)))
        yield histogram
        gauges: dict[str, str] = self.redis.hgetall(keys.METRIC_GAUGES)  # type: ignore[assignment]
        for name, value in sorted(gauges.items()):
            if name in GAUGES:  # only known gauges: a stray field is no metric
                yield GaugeMetricFamily(PREFIX + name, HELP[name], value=float(value))


def make_registry(client: redis.Redis, read: Callable[[], Overview]) -> CollectorRegistry:
    """Everything ``covers metrics`` serves: the counters and histograms kept in
    `client`'s Redis, and the cluster's gauges from `read` (called at each scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(client))
    registry.register(ClusterCollector(read))
    return registry


def make_app() -> Any:
    """A WSGI app serving /metrics from this cluster's Redis (`make_registry`).

    First, once per cluster, jobs recorded before the overview's indexes existed are
    indexed (`kie_covers.store.reindex`), so the gauges count them too.
    """
    client = get_redis()
    indexed = index_existing(client)
    if indexed:
        log.info("indexed %d jobs recorded before the overview's indexes", indexed)
    return make_wsgi_app(make_registry(client, cluster_overview))
