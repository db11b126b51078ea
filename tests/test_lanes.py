"""Priority lanes and tenants: validated like every field, kept on the record, shown.

`enqueue_cover(..., priority=, tenant=)`, raw Celery messages with both as keyword
arguments, batches (``bulk`` by default) and the ``covers enqueue`` flags. How the
limiter serves the lanes is tests/test_fair_slots.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from celery.result import AsyncResult

from kie_covers import enqueue_cover, get_cover
from kie_covers.core.errors import InvalidPayload
from kie_covers.core.schemas import MAX_TENANT_CHARS, validate_cover_request, validate_lane
from kie_covers.runtime.app import app
from kie_covers.runtime.messages import COVER_TASK
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.services.batch import BatchRefused, enqueue_batch, read_batch
from kie_covers.standin import KieStandin
from kie_covers.store.jobs import JobStore, Lifetimes
from kie_covers.store.run import Run
from kie_covers.worker.batch_cli import add_enqueue_from_arguments
from tests.conftest import LANES_DB, QUEUE, empty_db, process_env
from tests.services import ROOT, WorkerProcess

CALLBACK = "http://127.0.0.1:9/cb"


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[JobStore]:
    """A job store on an emptied database of the suite's Redis, this module's own."""
    with empty_db(redis_server, LANES_DB) as conn:
        yield JobStore(conn, Lifetimes(result_ttl_s=60, failure_ttl_s=120))


def test_priority_and_tenant_default_to_interactive_and_the_default_tenant() -> None:
    clean = validate_cover_request({"taskId": "abc", "callBackUrl": CALLBACK})
    assert (clean["priority"], clean["tenant"]) == ("interactive", None)
    clean = validate_cover_request({"taskId": "abc", "callBackUrl": CALLBACK,
                                    "priority": "bulk", "tenant": "org:acme@eu-1.x_y"})
    assert (clean["priority"], clean["tenant"]) == ("bulk", "org:acme@eu-1.x_y")
    assert validate_lane("bulk", "t" * MAX_TENANT_CHARS) == ("bulk", "t" * MAX_TENANT_CHARS)


@pytest.mark.parametrize(("priority", "tenant", "bad"), [
    ("urgent", None, {"priority"}),
    ("Interactive", None, {"priority"}),
    (1, None, {"priority"}),
    (None, None, {"priority"}),
    ("bulk", "", {"tenant"}),
    ("bulk", "t" * (MAX_TENANT_CHARS + 1), {"tenant"}),
    ("bulk", "has space", {"tenant"}),
    ("bulk", "acme\n", {"tenant"}),  # matched whole: a trailing newline is no second id
    ("bulk", "-acme", {"tenant"}),
    ("bulk", "bücher", {"tenant"}),
    ("bulk", 42, {"tenant"}),
    ("later", "a/b", {"priority", "tenant"}),
])
def test_a_bad_priority_or_tenant_is_refused_naming_each_field(
    priority: object, tenant: object, bad: set[str]
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        validate_cover_request({"taskId": "abc", "callBackUrl": CALLBACK,
                                "priority": priority, "tenant": tenant})
    assert set(caught.value.fields) == bad
    with pytest.raises(InvalidPayload) as again:
        validate_lane(priority, tenant)
    assert set(again.value.fields) == bad


def test_the_store_keeps_both_on_the_record_and_a_raw_message_brings_its_own(
    store: JobStore
) -> None:
    # Given a job enqueued in the bulk lane for tenant acme
    job_id, created = store.enqueue(str(uuid.uuid4()), uuid.uuid4().hex, CALLBACK, 30, "q",
                                    "bulk", "acme")
    assert created
    job = store.get(job_id)
    assert job is not None and (job.priority, job.tenant) == ("bulk", "acme")
    shown = job.to_dict()
    assert (shown["priority"], shown["tenant"]) == ("bulk", "acme")
    # And a raw message's job (no record yet) made with the message's own lane
    raw_id = str(uuid.uuid4())
    begun = store.begin(raw_id, uuid.uuid4().hex, CALLBACK, 30, "q", "bulk", "globex")
    assert isinstance(begun, Run)
    with begun as run:
        assert (run.job.priority, run.job.tenant) == ("bulk", "globex")
    # But a known job keeps its own, whatever a later message says
    again = store.begin(job_id, job.music_task_id, CALLBACK, 30, "q", "interactive", None)
    assert isinstance(again, Run)
    with again as run:
        assert (run.job.priority, run.job.tenant) == ("bulk", "acme")
    # And a job enqueued without them is interactive, for the default tenant
    plain, _ = store.enqueue(str(uuid.uuid4()), uuid.uuid4().hex, CALLBACK, 30, "q")
    plain_job = store.get(plain)
    assert plain_job is not None
    assert (plain_job.to_dict()["priority"], plain_job.to_dict()["tenant"]) == (
        "interactive", None)


def test_batch_lines_may_name_their_own_lane_and_tenant() -> None:
    lines = [
        json.dumps({"taskId": "m1"}),
        json.dumps({"taskId": "m2", "priority": "interactive", "tenant": "acme"}),
        json.dumps({"taskId": "m3", "priority": "", "tenant": None}),  # empty: the batch's
        json.dumps({"taskId": "m4", "tenant": "no spaces please"}),
        json.dumps({"taskId": "m5", "priority": "soon"}),
    ]
    plan = read_batch(lines, default_callback_url=CALLBACK)
    assert [(r.music_task_id, r.priority, r.tenant) for r in plan.rows] == [
        ("m1", None, None), ("m2", "interactive", "acme"), ("m3", None, None)]
    assert [(b.line_no, list(b.fields)) for b in plan.bad] == [(4, ["tenant"]),
                                                               (5, ["priority"])]
    csv_plan = read_batch(["taskId,tenant,priority", "c1,acme,", "c2,,interactive"],
                          default_callback_url=CALLBACK)
    assert [(r.music_task_id, r.priority, r.tenant) for r in csv_plan.rows] == [
        ("c1", None, "acme"), ("c2", "interactive", None)]


def test_a_batch_with_a_bad_tenant_or_priority_is_refused_before_anything_is_queued() -> None:
    plan = read_batch(["m1"], default_callback_url=CALLBACK)
    with pytest.raises(InvalidPayload) as caught:
        enqueue_batch(plan, tenant="a b")
    assert list(caught.value.fields) == ["tenant"]
    assert not isinstance(caught.value, BatchRefused)
    with pytest.raises(InvalidPayload) as caught:
        enqueue_batch(plan, priority="fast")
    assert list(caught.value.fields) == ["priority"]


def test_the_enqueue_subparser_takes_priority_and_tenant_for_both_forms() -> None:
    parser = argparse.ArgumentParser(prog="covers")
    enqueue = parser.add_subparsers(dest="command").add_parser("enqueue")
    enqueue.add_argument("task_id", nargs="?")
    enqueue.add_argument("callback_url", nargs="?")
    add_enqueue_from_arguments(enqueue)
    single = parser.parse_args(["enqueue", "abc", CALLBACK, "--priority", "bulk",
                                "--tenant", "acme"])
    assert (single.priority, single.tenant) == ("bulk", "acme")
    batch = parser.parse_args(["enqueue", "--from", "f.csv"])
    assert (batch.priority, batch.tenant) == (None, None)  # None: bulk for a batch
    with pytest.raises(SystemExit):
        parser.parse_args(["enqueue", "--from", "f.csv", "--priority", "urgent"])


def covers(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # check=False: the tests read the exit code themselves.
    return subprocess.run([sys.executable, "-m", "kie_covers.worker.cli", *args],
                          check=False, cwd=ROOT, env=process_env(), capture_output=True,
                          text=True, input=stdin, timeout=60)


@pytest.mark.e2e
def test_lanes_reach_the_record_from_every_door(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    # enqueue_cover
    job_id = enqueue_cover(uuid.uuid4().hex, CALLBACK, priority="bulk", tenant="acme")
    assert (get_cover(job_id)["priority"], get_cover(job_id)["tenant"]) == ("bulk", "acme")
    with pytest.raises(InvalidPayload) as caught:
        enqueue_cover(uuid.uuid4().hex, CALLBACK, priority="now", tenant="x y")
    assert set(caught.value.fields) == {"priority", "tenant"}
    # covers enqueue: a single job is interactive unless told; a bad tenant is exit 2
    single = covers("enqueue", uuid.uuid4().hex, CALLBACK, "--tenant", "globex")
    assert single.returncode == 0, single.stderr
    shown = get_cover(single.stdout.strip())
    assert (shown["priority"], shown["tenant"]) == ("interactive", "globex")
    refused = covers("enqueue", uuid.uuid4().hex, CALLBACK, "--tenant", "x y")
    assert refused.returncode == 2 and "tenant: must hold only" in refused.stderr
    # covers enqueue --from: bulk unless told, and --tenant for lines that name none
    lines = "".join(json.dumps(line) + "\n" for line in (
        {"taskId": uuid.uuid4().hex}, {"taskId": uuid.uuid4().hex, "tenant": "own"}))
    batch = covers("enqueue", "--from", "-", "--callback-url", CALLBACK, "--tenant", "acme",
                   stdin=lines)
    assert batch.returncode == 0, batch.stderr
    assert [(r["priority"], r["tenant"]) for r in map(get_cover, batch.stdout.split())] == [
        ("bulk", "acme"), ("bulk", "own")]
    bad_batch = covers("enqueue", "--from", "-", "--callback-url", CALLBACK, "--tenant", "?",
                       stdin=lines)
    assert bad_batch.returncode == 2 and "--tenant: must hold only" in bad_batch.stderr
    # A raw Celery message: both as optional keyword arguments, validated like the rest
    raw_id = str(uuid.uuid4())
    app.send_task(COVER_TASK, kwargs={"taskId": uuid.uuid4().hex, "callBackUrl": CALLBACK,
                                      "priority": "bulk", "tenant": "initech"},
                  task_id=raw_id, queue=QUEUE)
    outcome = AsyncResult(raw_id, app=app).get(timeout=20)
    assert (outcome["state"], outcome["priority"], outcome["tenant"]) == (
        "succeeded", "bulk", "initech")
    bad_id = str(uuid.uuid4())
    app.send_task(COVER_TASK, kwargs={"taskId": uuid.uuid4().hex, "callBackUrl": CALLBACK,
                                      "tenant": "x" * 65},
                  task_id=bad_id, queue=QUEUE)
    with pytest.raises(InvalidPayload) as raw_refused:
        AsyncResult(bad_id, app=app).get(timeout=20)
    assert list(raw_refused.value.fields) == ["tenant"]
    assert get_cover(bad_id)["state"] == "failed"
