"""Metrics for the whole cluster, end to end: no process but the exporter is configured
for metrics, jobs end partly in workers (polls) and partly in `covers web` (Kie's
callbacks), some jobs wait, and the exporter's counters and gauges agree with what
`get_cover` reports for every job of the run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from kie_covers import enqueue_cover, get_cover
from kie_covers.core.states import JobState, WaitReason
from kie_covers.runtime.redis_server import free_port
from kie_covers.services.overview import cluster_overview
from kie_covers.standin import KieStandin
from tests.conftest import process_env
from tests.services import (
    ROOT,
    StartWorker,
    WebProcess,
    answers,
    scrape_metrics,
    wait_until,
)

pytestmark = pytest.mark.e2e

APP_URL = "http://127.0.0.1:9/cb"


@pytest.fixture
def exporter() -> Iterator[int]:
    """``covers metrics`` on a free port (given by --port, not COVERS_METRICS_PORT)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kie_covers.worker.cli", "metrics", "--port", str(port)],
        cwd=ROOT, env=process_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/metrics"), 60, 0.1, "the exporter")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def ended(job_id: str) -> bool:
    return JobState(get_cover(job_id)["state"]).final


def records(job_ids: list[str]) -> list[dict[str, Any]]:
    return [get_cover(job_id) for job_id in job_ids]


def gauged(record: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """What the gauges and counters see of a record: state, wait, error kind."""
    return record["state"], record["waiting_for"], (record["error"] or {}).get("kind")


def test_counters_and_gauges_agree_with_get_cover_when_web_and_workers_end_jobs(
        standin: KieStandin, web: WebProcess, start_worker: StartWorker, exporter: int
) -> None:
    # No process of this run but the exporter was told of metrics.
    assert "COVERS_METRICS_PORT" not in os.environ
    poller = start_worker(COVERS_CALLBACK_URL="")  # its jobs end by polling, in the worker
    caller = start_worker(KIE_POLL_INTERVAL="30")  # its jobs end by callbacks, in `covers web`
    # Callbacks a second after the cover is done: long after the submit is recorded, long
    # before the caller's first poll.
    standin.set_callback_mode("delay", 1.0)
    polled = [enqueue_cover(uuid.uuid4().hex, APP_URL, queue=poller.queue) for _ in range(3)]
    polled.append(enqueue_cover("notfound" + uuid.uuid4().hex, APP_URL, queue=poller.queue))
    called = [enqueue_cover(uuid.uuid4().hex, APP_URL, queue=caller.queue) for _ in range(3)]
    called.append(enqueue_cover("genfail" + uuid.uuid4().hex, APP_URL, queue=caller.queue))
    wait_until(lambda: all(ended(j) for j in polled + called), 60, 0.1, "every job to end")
    # Where they ended: the poller's successes by its polls; the caller's jobs with no
    # poll at all, so by a callback to `covers web`.
    assert [r["polls"] >= 1 for r in records(polled[:3])] == [True] * 3
    assert [(r["state"], r["polls"]) for r in records(called)] == \
        [("succeeded", 0)] * 3 + [("failed", 0)]

    # Now some jobs that do not end: one submitted (its callback is dropped, its poll is
    # 30 s away), one queued for a queue no worker reads, three held by maintenance.
    standin.set_callback_mode("drop")
    submitted = enqueue_cover(uuid.uuid4().hex, APP_URL, queue=caller.queue)
    wait_until(lambda: get_cover(submitted)["state"] == "submitted", 60, 0.1, "the submit")
    idle = enqueue_cover(uuid.uuid4().hex, APP_URL, queue="covers-nobody-" + uuid.uuid4().hex)
    standin.inject("generate", "455", times=None, retry_after="600")
    held = [enqueue_cover(uuid.uuid4().hex, APP_URL, queue=poller.queue) for _ in range(3)]
    wait_until(lambda: all(get_cover(j)["waiting_for"] == "maintenance" for j in held),
               60, 0.1, "the held jobs to wait for maintenance")

    every = polled + called + [submitted, idle] + held
    before = records(every)
    samples = scrape_metrics(exporter)
    # Nothing the gauges count moved while the exporter read (app notices may still be
    # given up meanwhile: they change other fields).
    assert [gauged(r) for r in records(every)] == [gauged(r) for r in before]

    # Gauges: the states and waits get_cover reports, job for job
    states = Counter(r["state"] for r in before)
    assert states == {"succeeded": 6, "failed": 2, "submitted": 1, "queued": 4}
    for state in JobState:
        assert samples[f'covers_jobs{{state="{state}"}}'] == states[state.value], state
    waits = Counter(r["waiting_for"] for r in before if r["waiting_for"])
    assert waits == {"maintenance": 3}
    for reason in WaitReason:
        assert samples[f'covers_waiting_jobs{{reason="{reason}"}}'] == waits[reason.value]
    assert samples['covers_waiting_oldest_age_seconds{reason="maintenance"}'] > 0
    assert samples['covers_waiting_oldest_age_seconds{reason="rate_slot"}'] == 0
    assert samples["covers_due_jobs"] == states["queued"] + states["submitted"]
    assert samples["covers_pause_seconds_left"] > 500
    assert samples['covers_paused{reason="maintenance"}'] == 1
    # (A worker killed by an earlier test may still count for a few seconds.)
    live = cluster_overview().workers
    assert {name.split("@")[0] for name in live} >= {poller.name, caller.name}
    assert samples["covers_workers_live"] >= 2

    # Counters: each ending once, whichever process ended it
    endings = Counter((r["state"], (r["error"] or {}).get("kind", "")) for r in before
                      if JobState(r["state"]).final)
    assert endings == {("succeeded", ""): 6, ("failed", "not_found"): 1,
                       ("failed", "generation_failed"): 1}
    counted = {name: value for name, value in samples.items()
               if name.startswith("covers_jobs_ended_total{")}
    assert counted == {f'covers_jobs_ended_total{{kind="{kind}",state="{state}"}}': n
                       for (state, kind), n in endings.items()}
    assert samples["covers_job_duration_seconds_count"] == sum(endings.values())
    # API answers, counted in the workers that got them
    answers = standin.answers()
    for code in ("200", "404", "455"):
        assert samples[f'covers_api_answers_total{{code="{code}",endpoint="generate"}}'] == \
            answers[f"generate:{code}"], code
    assert samples['covers_api_answers_total{code="200",endpoint="record-info"}'] == \
        answers["record-info:200"]

    # A worker that stops cleanly leaves the live set at once
    poller.stop()
    assert poller.name not in {name.split("@")[0] for name in cluster_overview().workers}
    assert scrape_metrics(exporter)["covers_workers_live"] <= len(live) - 1
