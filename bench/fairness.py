"""Benchmark: fair slots under one generate limit, against first come, first served.

    python -m bench.fairness [--bulk 2000] [--workers 4] [--limit 20/2s] [--only a|b]

Each scenario runs twice, each time on fresh state (its own redis-server, its own
Kie stand-in whose generate limit is ``--limit``, ``--workers`` worker processes
of this project told the same limit):

- **fair**: jobs carry their real lane and tenant.
- **fcfs**: every job is enqueued in one lane for one tenant, so the limiter
  serves them by arrival alone: the order the cluster-wide limiter gave before
  lanes and tenants existed.

Scenarios:

- **a**: ``--bulk`` bulk jobs of tenant A are waiting (enqueued while no
  worker runs, after one job has shown the workers' limit; then the first
  window used), then one interactive job of tenant B arrives. Printed: seconds
  from its enqueue to its generate at the stand-in, and how many of A's jobs
  were sent between the two. The target: within one window plus the margin.
- **b**: tenants A, B and C enqueue 300, 30 and 3 bulk jobs, in that order.
  Printed: the slots each got while all three had work, from C's first enqueue
  until C's last slot, read from the limiter's grant log
  (`FairLimiter.recent_grants`: every slot, in the order the one Redis decision
  handed them out), and Jain's fairness index of those counts,
  (sum x)^2 / (n * sum x^2): 1.0 when all got the same, 1/n when one got all.
  The target: at least 0.95. The same for A and B alone, from C's first enqueue
  until B's last slot (a longer look: C's three jobs make the first one short).
  Also printed, for comparison, the same counts taken from the calls as they
  reached the stand-in (from C's first enqueue, or the last call of the free
  first window if later, until the first tenant's last call): a window's slots
  are granted together when it opens, and the workers' processes then make
  those calls in whatever order they run, so within one window the calls'
  order is the workers', not the limiter's.

Scenario a's backlog is enqueued before the workers start: the stand-in shares
this process, and thousands of enqueues while calls come in would delay its
view of them.

For every run: the share of the limit used once it binds (``--limit``'s window
over the mean time from call i to call i+limit, as in bench.rate_limit), the
429 answers of the stand-in, and the calls that were the (limit+1)-th in some
window (0 expected). Each run is a child process (``--run``), so the settings
it puts in the environment are in place before the project reads them.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    CHILD_MARGIN_S,
    LimitedKie,
    Workers,
    add_pool_options,
    celery_ping,
    error_text,
    exit_on_stop_signals,
    format_limit,
    full_window_share,
    limited_kie,
    limited_settings,
    parse_limit,
    positive_int,
    print_result,
    run_child,
    set_environ,
    stderr,
    window_violations,
)
from bench.common import RATE_MARGIN_S as MARGIN_S
from kie_covers import enqueue_cover
from kie_covers.runtime.app import app
from kie_covers.runtime.connections import get_limiters
from kie_covers.standin import KieStandin
from kie_covers.worker.table import render

RUNS = ("a-fair", "a-fcfs", "b-fair", "b-fcfs")
#: Nothing listens there: the stand-in's callbacks fail and jobs end by polling.
CALLBACK_URL = "http://127.0.0.1:9/cb"
#: Scenario b's tenants and their bulk jobs, enqueued in this order.
TENANT_JOBS = (("A", 300), ("B", 30), ("C", 3))
#: Jain's index scenario b aims at.
JAIN_TARGET = 0.95


@dataclass
class Result:
    """What one run measured (see the module docstring).

    Attributes:
        run: ``a-fair``, ``a-fcfs``, ``b-fair`` or ``b-fcfs``.
        limit, per_s: the stand-in's (and the workers') limit.
        time_to_send_s: (a) seconds from the interactive job's enqueue to its generate.
        sent_before: (a) A's generates between the two.
        backlog: (a) A's jobs not yet sent when the interactive job arrived.
        counts: (b) tenant -> slots granted while all three had work.
        jain: (b) Jain's index of `counts`.
        counts_ab: (b) A's and B's slots from the same start until B's last.
        jain_ab: (b) Jain's index of `counts_ab`.
        call_counts: (b) tenant -> generates reaching the stand-in while all three
            had work (see the module docstring).
        call_jain: (b) Jain's index of `call_counts`.
        accepted: generates the stand-in accepted.
        limit_use: the share of the limit used once it binds, by the generates from
            `measured_from` on.
        measured_from: monotonic time the run's measure starts ((a): when the workers
            start again with the backlog waiting; the first job's call before it, made
            to show the workers' limit, is set-up).
        arrived_at: (a) monotonic time the interactive job was enqueued.
        limit_use_after: (a) `limit_use` of the generates from then on (with the
            backlog waiting in Redis, after the flood of its first messages).
        answers_429: 429 answers to generates.
        window_violations: accepted generates that were the (limit+1)-th in a window.
        error: why the run broke, if it did.
    """

    run: str
    limit: int = 0
    per_s: float = 0.0
    time_to_send_s: float = 0.0
    sent_before: int = 0
    backlog: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    jain: float = 0.0
    counts_ab: list[int] = field(default_factory=list)
    jain_ab: float = 0.0
    call_counts: dict[str, int] = field(default_factory=dict)
    call_jain: float = 0.0
    accepted: int = 0
    limit_use: float = 0.0
    measured_from: float = 0.0
    arrived_at: float = 0.0
    limit_use_after: float = 0.0
    answers_429: int = 0
    window_violations: int = 0
    log_dir: str = ""
    error: str | None = None


def jain_index(counts: list[int]) -> float:
    """Jain's fairness index of `counts`: (sum x)^2 / (n * sum x^2); 0 if all are 0."""
    squares = sum(x * x for x in counts)
    return sum(counts) ** 2 / (len(counts) * squares) if squares else 0.0


def _enqueue(count: int, label: str, lane: str, tenant: str, labels: dict[str, str]
             ) -> list[str]:
    ids = []
    for _ in range(count):
        music_id = uuid.uuid4().hex
        labels[music_id] = label
        ids.append(enqueue_cover(music_id, CALLBACK_URL, priority=lane, tenant=tenant))
    return ids


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s:g}s")
        time.sleep(0.02)


def _scenario_a(standin: KieStandin, args: argparse.Namespace, fair: bool,
                result: Result, start_workers: Callable[[], None],
                stop_workers: Callable[[], None]) -> None:
    labels: dict[str, str] = {}
    # One job first, so that a worker has asked with the limit in force: until then
    # new jobs are sent, not queued in Redis (FairLimiter.admit)
    start_workers()
    _enqueue(1, "prime", "bulk", "A", labels)
    _wait(lambda: len(standin.generate_times()) >= 1, args.timeout, "the first generate")
    stop_workers()
    stderr(f"{result.run}: enqueuing {args.bulk} bulk jobs of tenant A")
    _enqueue(args.bulk, "A", "bulk", "A", labels)
    result.measured_from = time.monotonic()
    start_workers()
    limiter = get_limiters().generate
    # Every job asked (parked in Redis, or sent), the first window used
    _wait(lambda: limiter.waiting() + len(standin.generate_times()) >= args.bulk + 1,
          args.timeout, "the backlog to wait")
    sent_at_arrival = len(standin.generate_times())
    result.backlog = args.bulk + 1 - sent_at_arrival
    started = time.monotonic()
    # fcfs: the same lane and tenant as the backlog, so arrival alone decides
    _enqueue(1, "urgent", "interactive" if fair else "bulk", "B" if fair else "A", labels)
    _wait(lambda: "urgent" in {labels.get(m) for m in standin.generate_order()[-50:]},
          args.timeout, "the interactive job's generate")
    order = [labels.get(m) for m in standin.generate_order()]
    at = order.index("urgent")
    result.time_to_send_s = standin.generate_times()[at] - started
    result.sent_before = order[sent_at_arrival:at].count("A")
    result.arrived_at = started
    if fair:  # keep the backlog flowing a while, to measure the limit's use
        time.sleep(args.steady)


def _scenario_b(standin: KieStandin, args: argparse.Namespace, fair: bool,
                result: Result, start_workers: Callable[[], None],
                stop_workers: Callable[[], None]) -> None:
    labels: dict[str, str] = {}
    start_workers()
    all_have_work = 0.0
    tenant_of: dict[str, str] = {}
    for tenant, count in TENANT_JOBS:
        stderr(f"{result.run}: enqueuing {count} bulk jobs of tenant {tenant}")
        if tenant == TENANT_JOBS[-1][0]:
            all_have_work = time.time()
        # fcfs: one tenant for all, so arrival alone decides
        for job_id in _enqueue(count, tenant, "bulk", tenant if fair else "A", labels):
            tenant_of[job_id] = tenant
    total = sum(count for _, count in TENANT_JOBS)
    _wait(lambda: len(standin.generate_times()) >= total, args.timeout, "every generate")
    # The slots, in the order the limiter handed them out (fcfs: by the jobs' tenants)
    grants = [(g.at_ms / 1000.0, tenant_of.get(g.job_id, "prime"))
              for g in get_limiters().generate.recent_grants()]
    c_last = max(at for at, who in grants if who == "C")
    b_last = max(at for at, who in grants if who == "B")
    span = [who for at, who in grants if all_have_work <= at <= c_last]
    # Up to C's last slot only: later slots of that same round went to A and B
    span = span[:len(span) - span[::-1].index("C")]
    result.counts = {tenant: span.count(tenant) for tenant, _ in TENANT_JOBS}
    result.jain = jain_index(list(result.counts.values()))
    span_ab = [who for at, who in grants if all_have_work <= at <= b_last]
    span_ab = span_ab[:len(span_ab) - span_ab[::-1].index("B")]
    result.counts_ab = [span_ab.count("A"), span_ab.count("B")]
    result.jain_ab = jain_index(result.counts_ab)
    # The same, from the calls as they reached the stand-in
    sends = list(zip(standin.generate_times(), (labels[m] for m in standin.generate_order()),
                     strict=True))
    # (Not before the free first window's calls, all granted at once to A, are sent.)
    since = max(all_have_work - time.time() + time.monotonic(),
                sends[min(result.limit, len(sends)) - 1][0])
    last = {tenant: max(t for t, who in sends if who == tenant) for tenant, _ in TENANT_JOBS}
    ends = min(last.values())
    result.call_counts = {
        tenant: sum(1 for t, who in sends if who == tenant and since < t <= ends)
        for tenant, _ in TENANT_JOBS}
    result.call_jain = jain_index(list(result.call_counts.values()))


def run_one(args: argparse.Namespace) -> Result:
    """Run ``args.run`` on fresh state; everything started is stopped before it returns."""
    name: str = args.run
    limit, per_s = args.limit
    log_dir = Path(tempfile.mkdtemp(prefix=f"kie-fairness-{name}-"))
    result = Result(run=name, limit=limit, per_s=per_s, log_dir=str(log_dir))
    try:
        with limited_kie(log_dir, args.limit) as kie:
            try:
                _run_scenario(kie, args, result, log_dir)
            finally:
                times = kie.standin.generate_times()
                result.accepted = len(times)
                result.limit_use = full_window_share(
                    [t for t in times if t >= result.measured_from], limit, per_s)
                result.limit_use_after = full_window_share(
                    [t for t in times if t >= result.arrived_at], limit, per_s)
                result.window_violations = window_violations(times, limit, per_s)
                result.answers_429 = kie.standin.answers().get("generate:429", 0)
    except BaseException as error:  # reported in the table; SystemExit from SIGTERM too
        result.error = error_text(error)
    if not args.keep_logs and result.error is None and not result.answers_429:
        shutil.rmtree(log_dir, ignore_errors=True)
    return result


def _run_scenario(kie: LimitedKie, args: argparse.Namespace, result: Result,
                  log_dir: Path) -> None:
    """Run ``args.run``'s scenario on `kie`, with workers started and stopped as it asks."""
    name: str = args.run
    queue = "bench-fairness"
    env = set_environ(limited_settings(kie, args.limit, queue))
    pools: list[Workers] = []

    def start_workers() -> None:
        stderr(f"{name}: starting {args.workers} workers")
        pools.append(Workers("kie_covers.worker", queue, args.workers, env, log_dir,
                             concurrency=args.concurrency))
        pools[-1].start(lambda: celery_ping(app))

    def stop_workers() -> None:
        pools[-1].stop()

    try:
        scenario = _scenario_a if name.startswith("a") else _scenario_b
        scenario(kie.standin, args, name.endswith("fair"), result, start_workers,
                 stop_workers)
    finally:
        for pool in pools:
            pool.stop()


def _spawn(name: str, args: argparse.Namespace) -> Result:
    command = [sys.executable, "-m", "bench.fairness", "--run", name,
               "--bulk", str(args.bulk), "--workers", str(args.workers),
               "--concurrency", str(args.concurrency), "--limit", format_limit(args.limit),
               "--steady", str(args.steady), "--timeout", str(args.timeout)]
    if args.keep_logs:
        command.append("--keep-logs")
    found, returncode = run_child(command, args.timeout + CHILD_MARGIN_S)
    if found is not None:
        return Result(**found)
    return Result(run=name, error=f"child exited with {returncode} and no result")


def _common(r: Result) -> list[Any]:
    return [f"{r.limit_use * 100:.1f} %", r.answers_429, r.window_violations, r.accepted]


def _print(results: list[Result], args: argparse.Namespace) -> None:
    limit, per_s = args.limit
    window = per_s + MARGIN_S
    common = ["limit use once it binds", "429 answers", "window violations", "generates"]
    a = [r for r in results if r.run.startswith("a")]
    if a:
        print(f"\n(a) one interactive job of tenant B arrives behind {args.bulk} bulk jobs "
              f"of tenant A (target: sent within {window:g} s, one window + margin)")
        print(render(["order", "A's jobs waiting", "time to send s", "A's jobs sent first",
                      "limit use from its arrival", *common],
                     [[r.run[2:], r.backlog, f"{r.time_to_send_s:.2f}", r.sent_before,
                       f"{r.limit_use_after * 100:.1f} %", *_common(r)] for r in a]))
        print("limit use from its arrival: the calls from the interactive job's arrival "
              "on; once it binds: all calls since the workers started with the backlog "
              "waiting (the first job's call before, which showed the workers' limit, is "
              "set-up)")
    b = [r for r in results if r.run.startswith("b")]
    if b:
        jobs = ", ".join(f"{t} {n}" for t, n in TENANT_JOBS)
        print(f"\n(b) bulk jobs of three tenants ({jobs}), enqueued in that order: slots "
              f"while all three had work (target: Jain's index >= {JAIN_TARGET})")
        print(render(["order", *(f"slots {t}" for t, _ in TENANT_JOBS), "Jain's index",
                      "A, B until B is done", "Jain's index (A, B)",
                      "calls at Kie A, B, C", "Jain's index (calls)", *common],
                     [[r.run[2:], *(r.counts.get(t, 0) for t, _ in TENANT_JOBS),
                       f"{r.jain:.3f}", ", ".join(map(str, r.counts_ab)), f"{r.jain_ab:.3f}",
                       ", ".join(str(r.call_counts.get(t, 0)) for t, _ in TENANT_JOBS),
                       f"{r.call_jain:.3f}", *_common(r)] for r in b]))
        print("slots: from the limiter's grant log, in grant order; calls at Kie: as they "
              "reached the stand-in (within one window, in the workers' order)")
    print(f"\nlimit {limit} generates per {per_s:g} s (window {window:g} s with the "
          f"margin), {args.workers} worker processes x {args.concurrency} pool slots; "
          "limit use = window / mean time from call i to call i+limit (bench.rate_limit)")
    for r in results:
        if r.error:
            print(f"{r.run}: error: {r.error}")
        if r.log_dir and Path(r.log_dir).exists():
            print(f"{r.run}: logs kept in {r.log_dir}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a run broke)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=(
        "Fair slots (lanes, tenants) against first come, first served, on the stand-in."))
    parser.add_argument("--bulk", type=positive_int, default=2000,
                        help="bulk jobs waiting in scenario a (default %(default)s)")
    # 2 pool slots, not Celery's default of one per core: with 16 processes on 2 cores a
    # call let through can reach the stand-in later than the 0.05 s margin (a 429 there)
    add_pool_options(parser, workers=4, concurrency=2)
    parser.add_argument("--limit", type=parse_limit, default=(20, 2.0),
                        help="generates allowed per window (default 20/2s)")
    parser.add_argument("--steady", type=float, default=30.0,
                        help="seconds scenario a (fair) goes on after the interactive job, "
                             "to measure the limit's use (default %(default)s)")
    parser.add_argument("--only", choices=("a", "b"), help="run one scenario only")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds a run may wait for its jobs (default %(default)s)")
    parser.add_argument("--keep-logs", action="store_true", help="keep every run's logs")
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        exit_on_stop_signals()
        result = run_one(args)
        print_result(asdict(result))
        return 0 if result.error is None else 1
    results = []
    for name in RUNS:
        if args.only is None or name.startswith(args.only):
            stderr(f"--- {name}")
            results.append(_spawn(name, args))
    _print(results, args)
    print("\ncommand: " + shlex.join([Path(sys.executable).name, "-m", "bench.fairness",
                                      *argv]))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
