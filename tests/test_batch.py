"""Batch enqueueing (`kie_covers.services.batch`, ``covers enqueue --from``), real services.

The command runs as a real process (``covers enqueue --from``, i.e.
``python -m kie_covers.worker.cli enqueue --from``) on the suite's Redis,
with the session worker and the Kie stand-in doing the covers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from kie_covers import get_cover
from kie_covers.config import keys
from kie_covers.core.states import HELD_BACK
from kie_covers.runtime.connections import get_redis
from kie_covers.runtime.redis_server import free_port
from kie_covers.services.batch import (
    BadLine,
    BatchRefused,
    batch_progress,
    enqueue_batch,
    read_batch,
)
from kie_covers.services.failures import count_failures, list_failures, run_retry_round
from kie_covers.standin import KieStandin
from kie_covers.worker.batch_cli import add_enqueue_from_arguments, wait_for_batch
from tests.conftest import process_env
from tests.services import ROOT, StartWorker, WorkerProcess, wait_until

CALLBACK = "http://127.0.0.1:9/cb"
OTHER_CALLBACK = "http://127.0.0.1:9/other-cb"


def music_id() -> str:
    return uuid.uuid4().hex


def covers(*args: str, stdin: str | None = None, timeout: float = 60, **env: str
           ) -> subprocess.CompletedProcess[str]:
    """Run ``covers ARGS`` as a real process with the suite's settings (and `env`)."""
    # check=False: the tests read the exit code themselves.
    return subprocess.run([sys.executable, "-m", "kie_covers.worker.cli", *args],
                          check=False, cwd=ROOT, env=process_env(**env), input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def batch_cli(*args: str, stdin: str | None = None, timeout: float = 60, **env: str
              ) -> subprocess.CompletedProcess[str]:
    """Run the batch command (``covers enqueue ARGS``) as a real process."""
    return covers("enqueue", *args, stdin=stdin, timeout=timeout, **env)


def paid(standin: KieStandin, task_ids: list[str]) -> dict[str, int]:
    """The stand-in's ledger for these music tasks (0 = never paid)."""
    ledger = standin.paid()
    return {t: ledger.get(t, 0) for t in task_ids}


def stored_jobs() -> list[str]:
    """Keys a single enqueue would have written: job records, music mappings, the due set."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    with client:
        return sorted([*client.scan_iter("covers:job:*"), *client.scan_iter("covers:music:*"),
                       *client.scan_iter("covers:due")])


@pytest.mark.e2e
def test_a_csv_with_a_bad_line_is_refused_with_its_line_number_and_nothing_is_enqueued(
    standin: KieStandin, worker: WorkerProcess, tmp_path: Path
) -> None:
    # Given a CSV with a header, good lines and two bad ones (lines 3 and 5)
    good = [music_id(), music_id()]
    path = tmp_path / "songs.csv"
    path.write_text(f"taskId,callBackUrl\n{good[0]},{CALLBACK}\nbad id!,{CALLBACK}\n"
                    f"{good[1]},{CALLBACK}\n{music_id()},not-a-url\n")
    # When it is enqueued without --skip-bad
    done = batch_cli("--from", str(path))
    # Then it exits 2 naming each bad line and field, and enqueues nothing
    assert done.returncode == 2, done.stderr
    assert re.search(r"^line 3: taskId: must hold only", done.stderr, re.M), done.stderr
    assert re.search(r"^line 5: callBackUrl: Not a valid URL", done.stderr, re.M)
    assert "nothing enqueued" in done.stderr and "--skip-bad" in done.stderr
    assert done.stdout == ""
    assert stored_jobs() == []
    # And through the Python API too: BatchRefused lists the lines, Redis stays empty
    plan = read_batch(path)
    assert [row.line_no for row in plan.rows] == [2, 4]
    with pytest.raises(BatchRefused) as refused:
        enqueue_batch(plan)
    assert [b.line_no for b in refused.value.bad_lines] == [3, 5]
    assert set(refused.value.fields) == {"line 3: taskId", "line 5: callBackUrl"}
    assert stored_jobs() == []
    # And the stand-in was never called (the worker had nothing to take)
    assert standin.counts()["generate"] == 0


@pytest.mark.e2e
def test_json_lines_from_stdin_with_skip_bad_enqueue_the_good_ones(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    first, second, third = music_id(), music_id(), music_id()
    lines = [
        json.dumps({"taskId": first, "callBackUrl": CALLBACK}),   # 1 good
        "",                                                        # 2 blank: ignored
        json.dumps({"taskId": second}),                            # 3 good: default URL
        json.dumps({"taskId": "has space", "callBackUrl": CALLBACK}),  # 4 bad taskId
        "{oops",                                                   # 5 not JSON
        "[1, 2]",                                                  # 6 not an object
        json.dumps({"taskId": first, "callBackUrl": CALLBACK}),   # 7 duplicate of 1
        json.dumps({"taskId": third, "callBackUrl": OTHER_CALLBACK}),  # 8 good
    ]
    stdin = "\n".join(lines) + "\n"
    # Given the batch without skip_bad: refused as a whole, nothing stored
    plan = read_batch(stdin.splitlines(), default_callback_url=CALLBACK)
    assert plan.format == "jsonl" and [row.line_no for row in plan.rows] == [1, 3, 8]
    with pytest.raises(BatchRefused) as refused:
        enqueue_batch(plan)
    assert [b.line_no for b in refused.value.bad_lines] == [4, 5, 6, 7]
    assert stored_jobs() == []
    # When --skip-bad is given
    done = batch_cli("--from", "-", "--callback-url", CALLBACK, "--skip-bad", "--json",
                     stdin=stdin)
    # Then the three good lines are enqueued, the four bad ones reported by line
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [s["line"] for s in out["skipped"]] == [4, 5, 6, 7]
    # And --json pairs each job id with its line and taskId, in file order
    assert [(j["line"], j["taskId"]) for j in out["jobs"]] == [(1, first), (3, second),
                                                              (8, third)]
    assert [j["job_id"] for j in out["jobs"]] == out["job_ids"]
    assert len(set(out["job_ids"])) == 3
    assert "enqueued 3 jobs (4 skipped)" in done.stderr
    assert "line 5: json: not valid JSON" in done.stderr
    assert "line 6: json: expected one object per line" in done.stderr
    assert "line 7: taskId: duplicate of line 1" in done.stderr
    records = [get_cover(job_id) for job_id in out["job_ids"]]
    assert [(r["music_task_id"], r["callback_url"]) for r in records] == [
        (first, CALLBACK), (second, CALLBACK), (third, OTHER_CALLBACK)]
    # And they are real jobs: the worker ends them (so none is still in flight, and
    # paid, after the next test has reset the stand-in)
    wait_until(lambda: batch_progress(out["job_ids"]).done == 3, 20, 0.1, "the jobs to end")


@pytest.mark.e2e
def test_wait_ends_with_every_job_succeeded_paid_once_and_a_summary(
    standin: KieStandin, worker: WorkerProcess, tmp_path: Path
) -> None:
    # Given a header-less CSV of six music tasks
    task_ids = [music_id() for _ in range(6)]
    path = tmp_path / "batch.csv"
    path.write_text("".join(f"{t},{CALLBACK}\n" for t in task_ids))
    # When it is enqueued with --wait
    done = batch_cli("--from", str(path), "--wait", "--timeout", "30", timeout=60)
    # Then every job succeeded, the summary table says so, and the exit code is 0
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enqueued 6 jobs (0 skipped)" in done.stderr
    assert re.search(r"^\[#+\] 6/6  done 6  failed 0", done.stderr, re.M), done.stderr
    assert re.search(r"^succeeded\s+6$", done.stdout, re.M), done.stdout
    assert re.search(r"^total\s+6$", done.stdout, re.M)
    assert "failed jobs" not in done.stdout
    # And Kie was paid exactly once per music task
    assert paid(standin, task_ids) == {t: 1 for t in task_ids}
    # When the same batch runs again: the same jobs come back, nothing is paid again
    again = batch_cli("--from", str(path), "--wait", "--timeout", "30", "--json")
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["progress"]["done"] == 6 and out["timed_out"] is False
    assert [r["state"] for r in out["records"]] == ["succeeded"] * 6
    assert [r["music_task_id"] for r in out["records"]] == task_ids
    assert paid(standin, task_ids) == {t: 1 for t in task_ids}
    # And on a terminal the line is redrawn in place with \r and ended with a newline
    terminal = _Terminal()
    progress, timed_out = wait_for_batch(out["job_ids"], 5, terminal)
    assert progress.done == 6 and not timed_out
    assert terminal.getvalue().startswith("\r[") and terminal.getvalue().endswith("\n")


@pytest.mark.e2e
def test_wait_lists_the_failed_jobs_and_exits_1(
    standin: KieStandin, worker: WorkerProcess, tmp_path: Path
) -> None:
    # Given a batch with a music task Kie does not know
    good, unknown = music_id(), "notfound-" + music_id()
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps({"taskId": good}) + "\n" + json.dumps({"taskId": unknown}))
    # When it is enqueued with --wait
    done = batch_cli("--from", str(path), "--callback-url", CALLBACK, "--wait",
                     "--timeout", "30")
    # Then it exits 1 and lists the failed job with its music task, kind and message
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"^succeeded\s+1$", done.stdout, re.M), done.stdout
    assert re.search(r"^failed\s+1$", done.stdout, re.M)
    failed_row = next(line for line in done.stdout.splitlines() if unknown in line)
    assert "not_found" in failed_row and "music task not found" in failed_row


@pytest.mark.e2e
def test_batch_progress_counts_match_get_cover(
    standin: KieStandin, worker: WorkerProcess
) -> None:
    # Given jobs that ended (two succeeded, one failed)...
    ended = enqueue_batch(read_batch(
        [f"{music_id()},{CALLBACK}", f"{music_id()},{CALLBACK}", f"notfound-{music_id()}"],
        default_callback_url=CALLBACK))
    wait_until(lambda: batch_progress(ended).finished, 20, 0.1, "the first jobs to end")
    # ...and four held back because the account ran out of credits
    standin.set_credits(0)
    held = enqueue_batch(read_batch([f"{music_id()}\n" for _ in range(4)], CALLBACK))
    wait_until(lambda: all(get_cover(j)["waiting_for"] == "out_of_credits" for j in held),
               20, 0.1, "the jobs to wait for credits")
    unknown = str(uuid.uuid4())
    job_ids = [*ended, *held, unknown]

    # When batch_progress counts them (read twice around the get_cover reads, so
    # the comparison is made on a moment when nothing changed in between)
    def stable() -> bool:
        before = batch_progress(job_ids)
        records = [get_cover(j) for j in job_ids if j != unknown]
        after = batch_progress(job_ids)
        if before != after:
            return False
        states = [r["state"] for r in records]
        waiting = [r for r in records
                   if r["state"] == "queued" and r["waiting_for"] in HELD_BACK]
        # Then every count is what get_cover shows, job by job
        assert after.total == len(job_ids) and after.missing == 1
        assert after.done == states.count("succeeded") == 2
        assert after.failed == states.count("failed") == 1
        assert after.waiting == len(waiting) == 4
        assert after.in_progress == len(records) - 3 - len(waiting) == 0
        assert after.waiting_for == {"out_of_credits": 4}
        assert after.failed_ids == tuple(r["job_id"] for r in records
                                         if r["state"] == "failed")
        return True

    wait_until(stable, 10, 0.1, "a stable read")
    # And once credits return, the waiting jobs end succeeded, each paid once
    standin.set_credits(1000)
    wait_until(lambda: batch_progress(held).done == 4, 20, 0.1, "the held jobs to succeed")
    assert all(standin.paid()[get_cover(j)["music_task_id"]] == 1 for j in held)


def _jobs_by_task(out: dict[str, Any]) -> dict[str, str]:
    return {j["taskId"]: j["job_id"] for j in out["jobs"]}


def _failure_rows() -> dict[str, list[str]]:
    """``covers failures --json``: music task -> its listed job ids."""
    listed = covers("failures", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: dict[str, list[str]] = {}
    for row in json.loads(listed.stdout):
        rows.setdefault(row["music_task_id"], []).append(row["job_id"])
    return rows


@pytest.mark.e2e
def test_running_a_batch_again_leaves_one_failure_row_per_music_task(
    standin: KieStandin, worker: WorkerProcess, tmp_path: Path
) -> None:
    # Given a batch with a good line, an unknown music task and one Kie fails to draw
    good, missing, broken = music_id(), f"notfound-{music_id()}", f"genfail-{music_id()}"
    path = tmp_path / "songs.csv"
    path.write_text(f"taskId\n{good}\n{missing}\n{broken}\n")
    # When it is run three times, each run waiting for the end
    runs = []
    for _ in range(3):
        done = batch_cli("--from", str(path), "--callback-url", CALLBACK, "--wait",
                         "--timeout", "30", "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        out = json.loads(done.stdout)
        assert [(j["line"], j["taskId"]) for j in out["jobs"]] == [
            (2, good), (3, missing), (4, broken)]
        assert [r["state"] for r in out["records"]] == ["succeeded", "failed", "failed"]
        runs.append(_jobs_by_task(out))
    # Then the good line kept its job; each failed line got a new job per run...
    assert len({run[good] for run in runs}) == 1
    assert len({run[missing] for run in runs}) == len({run[broken] for run in runs}) == 3
    # ...and each failed music task has one failure row: its newest job's
    last = runs[-1]
    assert _failure_rows() == {missing: [last[missing]], broken: [last[broken]]}
    assert count_failures() == 2
    assert count_failures(kind="not_found") == count_failures(kind="generation_failed") == 1
    assert "2 shown of 2" in covers("failures").stdout
    # (the older jobs stay readable by id, failed)
    assert get_cover(runs[0][missing])["state"] == "failed"

    # When one music task is enqueued by hand twice (the single-job form)
    single = f"notfound-{music_id()}"
    by_hand = []
    for _ in range(2):
        done = covers("enqueue", single, CALLBACK, "--wait", "--timeout", "30", "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        by_hand.append(json.loads(done.stdout)["job_id"])
    # Then it too has one row, the newest job's
    assert by_hand[0] != by_hand[1]
    assert _failure_rows()[single] == [by_hand[1]]
    assert count_failures() == 3

    # When a scheduled retry round comes (the retryable failure's time has come)
    client = get_redis()
    assert client.zrange(keys.RETRY_DUE, 0, -1) == [last[broken]]
    due_at = float(client.zscore(keys.RETRY_DUE, last[broken]) or 0) / 1000
    assert run_retry_round(now=due_at + 1, interval_s=0.5)["retried"] == 1
    # Then only the newest job is retried, and failing again it is still the one row
    wait_until(lambda: get_cover(last[broken])["retry_rounds"] == 1
               and get_cover(last[broken])["state"] == "failed", 30, 0.1,
               "the retried job to fail again")
    assert _failure_rows()[broken] == [last[broken]]
    assert count_failures() == 3
    # And an older job of that music task is not retried: the newer one is its row
    old = covers("retry", runs[0][broken])
    assert old.returncode == 1 and "superseded" in old.stdout

    # When the newest failure of a music task is forgotten
    assert "1 forgotten" in covers("forget", last[missing]).stdout
    # Then no older job of it comes back in its place
    rows = _failure_rows()
    assert missing not in rows and count_failures() == 2 == len(list_failures())


@pytest.mark.e2e
def test_status_shows_where_the_images_are_kept(
    standin: KieStandin, start_worker: StartWorker, tmp_path: Path
) -> None:
    # Given a worker keeping images in a local directory (jobs end by its own poll)
    store = tmp_path / "images"
    worker = start_worker(COVERS_IMAGE_STORE=str(store),
                          COVERS_CALLBACK_URL=f"http://127.0.0.1:{free_port()}/kie/callback")
    task_ids = [music_id(), music_id(), f"notfound-{music_id()}"]
    done = batch_cli("--from", "-", "--callback-url", CALLBACK, "--json",
                     stdin="".join(f"{t}\n" for t in task_ids), COVERS_QUEUE=worker.queue)
    assert done.returncode == 0, done.stderr
    *kept_ids, missing = json.loads(done.stdout)["job_ids"]

    def kept() -> bool:
        return (all(len(get_cover(j)["stored_images"]) == 2 for j in kept_ids)
                and get_cover(missing)["state"] == "failed")

    wait_until(kept, 30, 0.1, "the images of the good jobs to be kept")
    expected = [[job_id, str(n), image["location"]] for job_id in kept_ids
                for n, image in enumerate(get_cover(job_id)["stored_images"], 1)]
    assert all(row[2].startswith(str(store) + "/") for row in expected)
    # When the three jobs' status is shown as text (exit 1: one failed)
    shown = covers("status", *kept_ids, missing)
    assert shown.returncode == 1, shown.stderr
    # Then every stored location is listed under its job and image number
    table = shown.stdout.split("\nstored images:\n", 1)[1].splitlines()
    assert [line.split() for line in table[2:]] == expected
    # And a job with no stored images shows no such table
    assert "stored images" not in covers("status", missing).stdout


def test_duplicate_task_ids_in_a_file_are_reported(tmp_path: Path) -> None:
    # Given a CSV (header in snake case) naming one music task twice
    task_id = music_id()
    path = tmp_path / "dups.csv"
    path.write_text(f"task_id,callback_url\n{task_id},{CALLBACK}\n\n{task_id},{CALLBACK}\n")
    plan = read_batch(path)
    # Then the later line is a bad line pointing at the first
    assert [row.line_no for row in plan.rows] == [2]
    assert plan.bad == [BadLine(4, {"taskId": ["duplicate of line 2"]},
                                "taskId: duplicate of line 2")]


def test_the_options_fit_the_enqueue_subparser_of_covers() -> None:
    # Given the enqueue subparser as worker/cli.py builds it, positionals made optional
    parser = argparse.ArgumentParser(prog="covers")
    enqueue = parser.add_subparsers(dest="command").add_parser("enqueue")
    enqueue.add_argument("task_id", nargs="?")
    enqueue.add_argument("callback_url", nargs="?")
    enqueue.add_argument("--wait", action="store_true")
    enqueue.add_argument("--timeout", type=float, default=600.0)
    enqueue.add_argument("--json", action="store_true")
    # When the batch options are added (no clash with --wait, --timeout, --json)
    add_enqueue_from_arguments(enqueue)
    # Then both forms parse, and --callback-url never lands in the positional's slot
    batch = parser.parse_args(["enqueue", "--from", "f.csv", "--callback-url", CALLBACK,
                               "--skip-bad", "--wait", "--timeout", "5"])
    assert (batch.from_file, batch.default_callback_url, batch.callback_url) == (
        "f.csv", CALLBACK, None)
    assert batch.skip_bad and batch.wait and batch.timeout == 5.0 and batch.task_id is None
    single = parser.parse_args(["enqueue", "abc", CALLBACK])
    assert (single.task_id, single.callback_url, single.from_file) == ("abc", CALLBACK, None)


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal, to see the in-place redraw."""

    def isatty(self) -> bool:
        return True
