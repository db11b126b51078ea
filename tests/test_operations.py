"""What operators run: other brokers, Prometheus metrics, JSON logs."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kie_covers import enqueue_cover, wait_for_cover
from kie_covers.runtime.redis_server import free_port
from kie_covers.standin import KieStandin
from tests.conftest import process_env
from tests.services import (
    BROKERS,
    RABBITMQ_URL,
    ROOT,
    StartWorker,
    answers,
    scrape_metrics,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("broker", BROKERS)
def test_the_pipeline_runs_on_each_broker(
    standin: KieStandin, start_worker: StartWorker, broker: str
) -> None:
    extra = {"COVERS_BROKER_URL": RABBITMQ_URL} if broker == "rabbitmq" else {}
    worker = start_worker(**extra)
    # A producer process on the same broker (this test process speaks Redis only).
    task_ids = [uuid.uuid4().hex for _ in range(5)]
    script = (
        "import json, sys\n"
        "from kie_covers import enqueue_cover, wait_for_cover\n"
        "ids = [enqueue_cover(t, 'http://127.0.0.1:9/cb') for t in sys.argv[1:]]\n"
        "print(json.dumps([wait_for_cover(j, timeout_s=40) for j in ids]))\n"
    )
    done = subprocess.run(  # check=False: the exit code is asserted with the output
        [sys.executable, "-c", script, *task_ids], check=False, cwd=ROOT, capture_output=True,
        text=True, env=process_env(COVERS_QUEUE=worker.queue, **extra), timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(done.stdout)
    assert [r["state"] for r in records] == ["succeeded"] * 5
    assert standin.paid() == {t: 1 for t in task_ids}
    if broker == "rabbitmq":
        assert "amqp://" in worker.log()  # really on RabbitMQ


def test_the_metrics_endpoint_counts_a_runs_known_outcomes(
    standin: KieStandin, start_worker: StartWorker, run_dir: Path
) -> None:
    port = free_port()
    # No COVERS_CALLBACK_URL: jobs end in the worker (by polling). Endings in `covers web`
    # and processes without COVERS_METRICS_PORT: tests/test_metrics_cluster.py.
    env = {"COVERS_METRICS_PORT": str(port), "COVERS_CALLBACK_URL": ""}
    worker = start_worker(**env)
    exporter = subprocess.Popen([sys.executable, "-m", "kie_covers.worker.cli", "metrics"],
                                cwd=ROOT,
                                env=process_env(**env), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        standin.inject("generate", "500", times=1)
        ok = [enqueue_cover(uuid.uuid4().hex, "http://127.0.0.1:9/cb", queue=worker.queue)
              for _ in range(3)]
        bad = enqueue_cover("notfound" + uuid.uuid4().hex, "http://127.0.0.1:9/cb",
                            queue=worker.queue)
        for job_id in [*ok, bad]:
            wait_for_cover(job_id, timeout_s=30)
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/metrics"), 20, 0.1, "the exporter")
        samples = scrape_metrics(port)
        assert samples['covers_api_answers_total{code="200",endpoint="generate"}'] == 3
        assert samples['covers_api_answers_total{code="404",endpoint="generate"}'] == 1
        assert samples['covers_api_answers_total{code="500",endpoint="generate"}'] == 1
        assert samples['covers_jobs_ended_total{kind="",state="succeeded"}'] == 3
        assert samples['covers_jobs_ended_total{kind="not_found",state="failed"}'] == 1
        assert samples["covers_job_duration_seconds_count"] == 4
        assert samples['covers_job_duration_seconds_bucket{le="+Inf"}'] == 4
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)


def test_json_logs_have_one_line_per_job_step_with_the_ids(
    standin: KieStandin, start_worker: StartWorker
) -> None:
    # No COVERS_CALLBACK_URL: the job ends in this worker, whose log the test reads.
    worker = start_worker(COVERS_LOG_FORMAT="json", COVERS_CALLBACK_URL="")
    task_id = uuid.uuid4().hex
    job_id = enqueue_cover(task_id, "http://127.0.0.1:9/cb", queue=worker.queue)
    assert wait_for_cover(job_id, timeout_s=20)["state"] == "succeeded"
    wait_until(lambda: '"step": "succeeded"' in worker.log(), 10, message="the last step")
    lines = [json.loads(line) for line in worker.log().splitlines() if line.strip()]
    steps = [line for line in lines if line.get("job_id") == job_id]
    assert {"submitted", "succeeded"} <= {line["step"] for line in steps}
    assert all(line["music_task_id"] == task_id for line in steps)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
