"""The cluster's state as Prometheus gauges, read from Redis at each scrape.

`ClusterCollector` turns one `kie_covers.store.overview.Overview` (one Redis round
trip, no scan of job keys) into the gauges below (all prefixed ``covers_``). Every
state, wait reason, pause reason and credits reason is always present (0 when
none), so dashboards and alerts see zeros, not gaps.

- ``jobs{state}``: job records by state (queued, submitted, succeeded, failed;
  ended ones until their record expires)
- ``jobs_oldest_age_seconds{state}``: queued and submitted: seconds since the
  oldest job in that state entered it (0 when none)
- ``waiting_jobs{reason}``, ``waiting_oldest_age_seconds{reason}``: jobs waiting
  by reason (`kie_covers.core.states.WaitReason`), and how long the oldest has
- ``due_jobs``: entries of the job due set (every live job has one)
- ``notices_pending``, ``image_copies_pending``: app notices and image copies
  still to do
- ``limiter_granted{limiter}``, ``limiter_limit{limiter}``,
  ``limiter_window_seconds{limiter}``: calls let through in the current window
  of each cluster-wide limiter (``generate``, ``status``), its limit and window
- ``pause_seconds_left``: seconds left of the cluster-wide pause (0 when none);
  ``paused{reason}``: 1 for the reason of the pause in force
- ``credits_held{reason}``: 1 while generates are held for credits for that reason
- ``credits_checked_timestamp_seconds``, ``credits_left``: when the newest credit
  check ran (unix seconds) and the credits it found (absent until one ran)
- ``quarantined_messages``: broker messages set aside as unreadable
- ``workers_live``: workers whose heartbeat was seen within the dead-after time
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kie_covers.core.states import JobState, WaitReason
from kie_covers.store.overview import LIVE_STATES, Overview

PREFIX = "covers_"

#: Every gauge this collector serves, with its help text.
HELP = {
    "jobs": "Job records by state (ended ones until their record expires).",
    "jobs_oldest_age_seconds": "Seconds since the oldest queued or submitted job entered "
                               "its state (0 when there is none).",
    "waiting_jobs": "Jobs waiting, by reason.",
    "waiting_oldest_age_seconds": "Seconds the job waiting longest for a reason has "
                                  "waited (0 when none waits).",
    "due_jobs": "Entries of the job due set (every live job has one).",
    "notices_pending": "Ended jobs whose app notice is still to be delivered.",
    "image_copies_pending": "Succeeded jobs whose images are still to be copied.",
    "limiter_granted": "Calls the cluster-wide limiter let through in its current window.",
    "limiter_limit": "Calls the cluster-wide limiter allows per window.",
    "limiter_window_seconds": "The cluster-wide limiter's window, its margin included.",
    "pause_seconds_left": "Seconds left of the cluster-wide pause (0 when none).",
    "paused": "1 for the reason of the cluster-wide pause in force.",
    "credits_held": "1 while generates are held for credits, by reason.",
    "credits_checked_timestamp_seconds": "Unix time of the newest credit check.",
    "credits_left": "Credits the newest credit check found.",
    "quarantined_messages": "Broker messages set aside as unreadable.",
    "workers_live": "Workers whose heartbeat was seen within the dead-after time.",
}
#: The reasons a cluster-wide pause can have.
PAUSE_REASONS = (WaitReason.RATE_LIMITED, WaitReason.MAINTENANCE, WaitReason.PAUSED)
#: The reasons generates can be held for credits.
CREDIT_REASONS = (WaitReason.OUT_OF_CREDITS, WaitReason.DAILY_CAP)


def _gauge(name: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, HELP[name], labels=list(labels))


def _one(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, HELP[name], value=value)


def families(view: Overview) -> Iterator[GaugeMetricFamily]:
    """The gauges of one overview (see the module docstring)."""
    jobs, oldest = _gauge("jobs", ("state",)), _gauge("jobs_oldest_age_seconds", ("state",))
    for state in JobState:
        jobs.add_metric([state.value], view.jobs[state])
        if state in LIVE_STATES:
            oldest.add_metric([state.value], view.oldest_age_s[state] or 0.0)
    yield from (jobs, oldest)
    waiting = _gauge("waiting_jobs", ("reason",))
    waited = _gauge("waiting_oldest_age_seconds", ("reason",))
    for reason, wait in view.waiting.items():
        waiting.add_metric([reason.value], wait.count)
        waited.add_metric([reason.value], wait.oldest_age_s or 0.0)
    yield from (waiting, waited)
    yield _one("due_jobs", view.due_jobs)
    yield _one("notices_pending", view.pending_notices)
    yield _one("image_copies_pending", view.pending_copies)
    yield from _limiter_families(view)
    yield from _hold_families(view)
    yield _one("quarantined_messages", view.quarantined)
    yield _one("workers_live", len(view.workers))


def _limiter_families(view: Overview) -> Iterator[GaugeMetricFamily]:
    granted = _gauge("limiter_granted", ("limiter",))
    limit = _gauge("limiter_limit", ("limiter",))
    window = _gauge("limiter_window_seconds", ("limiter",))
    for use in view.limiters:
        granted.add_metric([use.name], use.granted)
        limit.add_metric([use.name], use.limit)
        window.add_metric([use.name], use.window_s)
    yield from (granted, limit, window)


def _hold_families(view: Overview) -> Iterator[GaugeMetricFamily]:
    pause = view.pause
    yield _one("pause_seconds_left", 0.0 if pause is None else pause.left_s)
    paused = _gauge("paused", ("reason",))
    for reason in PAUSE_REASONS:
        paused.add_metric([reason.value], 1.0 if pause and pause.reason is reason else 0.0)
    yield paused
    held = _gauge("credits_held", ("reason",))
    for reason in CREDIT_REASONS:
        held.add_metric([reason.value], 1.0 if view.credits.held is reason else 0.0)
    yield held
    check = view.credits.last_check
    checked, left = _gauge("credits_checked_timestamp_seconds"), _gauge("credits_left")
    if check is not None:
        checked.add_metric([], check.at)
        left.add_metric([], check.left)
    yield from (checked, left)


class ClusterCollector(Collector):
    """Prometheus collector of the cluster's gauges.

    Args:
        read: reads the overview now (e.g.
            `kie_covers.services.overview.cluster_overview`).
    """

    def __init__(self, read: Callable[[], Overview]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from families(self.read())
