"""How metric counters and histograms are laid out in Redis (shared by every process).

Counters live in one hash (`keys.METRIC_COUNTERS`), one field per name and label set
(`field`); a histogram in a hash of its own (`keys.metric_histogram`), with one
cumulative field per bucket (``le=<bound>``), ``count`` and ``sum``. The job
scripts count endings in the same step as the ending (``lua/finish.lua``), and
`kie_covers.runtime.metrics` counts everything else; the exporter
(`kie_covers.worker.metrics_server`) reads both.
"""

from __future__ import annotations

from collections.abc import Mapping

#: The counter of ended jobs, by ``state`` and error ``kind`` ("" for a success).
JOBS_ENDED = "jobs_ended_total"
#: The histogram of seconds from enqueue to the end of a job.
JOB_DURATION = "job_duration_seconds"
#: Upper bounds (seconds) of the job-duration histogram's buckets.
DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def field(name: str, labels: Mapping[str, object]) -> str:
    """The counter hash's field of counter `name` with `labels`:
    ``name|label=value,...``, labels sorted by name."""
    inner = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return f"{name}|{inner}"


def parse_field(stored: str) -> tuple[str, dict[str, str]]:
    """(name, labels) of a counter hash field (the inverse of `field`)."""
    name, _, inner = stored.partition("|")
    labels = dict(part.split("=", 1) for part in inner.split(",") if "=" in part)
    return name, labels


def bucket_name(bound: float) -> str:
    """How a bucket's upper bound is written in its field (``le=<this>``) and label."""
    return f"{bound:g}"


def ended_field(state: str, kind: str) -> str:
    """The counter field of one ending (`JOBS_ENDED`)."""
    return field(JOBS_ENDED, {"state": state, "kind": kind})


#: The bucket bounds as the finish script takes them (comma-separated field names).
DURATION_BOUNDS_ARG = ",".join(bucket_name(b) for b in DURATION_BUCKETS_S)
