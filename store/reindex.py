"""Index jobs recorded before the overview's indexes existed (an upgrade, once).

The job scripts index every job as it changes (``lua/indexes.lua``), but records
written by an older version are in no index: the overview would not count them
until they next change state, and an ended record never does. `index_existing`
walks the job keys once (SCAN, in batches) and indexes those, each batch in one
script that skips any job its own scripts have indexed meanwhile; then it marks
the cluster as done (`keys.INDEXES_BUILT`), so later calls cost one GET. The
metrics exporter runs it as it starts.
"""

from __future__ import annotations

import time

import redis
from redis.commands.core import Script

from kie_covers.config import keys
from kie_covers.store.scripts import register

#: Job keys read per SCAN step and indexed per script call.
BATCH = 500


def index_existing(client: redis.Redis, force: bool = False) -> int | None:
    """Index every job that is in no state index yet, unless done before.

    Args:
        force: walk the job keys even if the cluster is marked done.

    Returns:
        How many jobs were indexed; None when the cluster was marked done already.
    """
    if not force and client.get(keys.INDEXES_BUILT):
        return None
    script = register(client, "index_jobs")
    prefix = keys.job("")
    indexed = 0
    batch: list[str] = []
    for key in client.scan_iter(match=keys.job("*"), count=BATCH):
        batch.append(str(key)[len(prefix):])
        if len(batch) >= BATCH:
            indexed += _index(script, batch)
            batch = []
    if batch:
        indexed += _index(script, batch)
    client.set(keys.INDEXES_BUILT, str(int(time.time())))
    return indexed


def _index(script: Script, job_ids: list[str]) -> int:
    return int(script(args=[keys.job(""), keys.state_index(""), keys.waiting(""),
                            int(time.time() * 1000), *job_ids]))
