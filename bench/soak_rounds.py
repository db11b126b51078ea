"""The rounds of a soak run: enqueue a batch, disrupt, wait, check the promise.

Each round enqueues ``--batch`` jobs and applies one scenario of SCENARIOS picked
at random (seeded): kill a worker, cut Redis connections, restart Redis, inject
API faults, or drop, duplicate or delay Kie's callbacks. Then it waits for every
job to end, clears the faults and checks that no job was lost, stuck or paid
twice (see `bench.soak` for the whole story).
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import stderr, wait_all
from bench.proc import format_mb
from bench.soak_results import SCENARIOS, Tally, Totals
from bench.soak_services import SoakServices, retrying
from kie_covers import enqueue_cover, get_cover
from kie_covers.config import keys
from kie_covers.core.errors import UnknownJob

#: The callBackUrl jobs carry: nothing listens there (outcome notices are refused and
#: given up after COVERS_NOTIFY_MAX_AGE).
CALLBACK_URL = "http://127.0.0.1:9/cb"
#: Seconds a round's jobs have to end before the ones still open count as stuck.
ROUND_TIMEOUT_S = 180.0
#: Seconds between two checks of the round's jobs while waiting.
WAIT_INTERVAL_S = 0.2
#: API faults injected on "any" endpoint in an ``api-faults`` round (each 2-5 times).
API_FAULTS = ("500", "body-500", "455", "429", "body-429", "malformed", "html", "empty",
              "reset", "no-data")
#: Seconds a "slow" generate waits before answering (the client's timeout is 2 s).
SLOW_DELAY_S = 2.5
#: Callback modes of a ``callbacks`` round: mode -> delay in seconds.
CALLBACK_MODES = {"drop": 0.0, "duplicate": 0.0, "delay": 1.2}
#: Seconds after the last job ended in which late or duplicate callbacks may land.
LATE_CALLBACK_S = 0.5
#: A disruption happens this many seconds after the batch was enqueued (uniform).
DISRUPT_AFTER_S = (0.2, 3.0)
#: Seconds each pool slot's first generate stays in flight in a ``kill-all`` round
#: (under the client's 2 s timeout: the stand-in accepts it after the kill).
KILL_ALL_IN_FLIGHT_S = 1.5


class Soak(SoakServices):
    """The services of one soak run (`SoakServices`) and its rounds.

    Args:
        workers: worker processes.
        concurrency: pool slots per worker process.
        batch: jobs per round.
        seed: seed of every random choice (scenarios, moments, victims, fault counts).
        log_dir: temp directory for the logs and Redis's files.
        scenarios: the scenarios rounds pick from (default: all of SCENARIOS).
    """

    def __init__(self, workers: int, concurrency: int, batch: int, seed: int,
                 log_dir: Path, scenarios: tuple[str, ...] = SCENARIOS) -> None:
        super().__init__(workers, concurrency, log_dir)
        self.batch = batch
        self.rng = random.Random(seed)
        self.scenarios = scenarios
        self._round_jobs: list[str] = []
        #: A ``kill-all`` round's kill (monotonic s) and the jobs the killed held.
        self._killed_at = 0.0
        self._held_at_kill: dict[str, int] = {}
        self._generates_before = 0  # generate calls the stand-in had before the round

    def _enqueue(self, count: int) -> dict[str, str]:
        """`count` new jobs: job id -> music task id (a retried enqueue is idempotent)."""
        jobs: dict[str, str] = {}
        for _ in range(count):
            task_id = uuid.uuid4().hex
            job_id = retrying(functools.partial(enqueue_cover, task_id, CALLBACK_URL), "enqueue")
            jobs[job_id] = task_id
        return jobs

    @staticmethod
    def _read(job_id: str) -> dict[str, Any] | None:
        """`get_cover(job_id)`, None when the job is unknown (lost)."""
        try:
            return retrying(lambda: get_cover(job_id), f"get_cover({job_id})")
        except UnknownJob:
            return None

    def _ended(self, job_id: str) -> bool:
        """True when the job ended, or is unknown (nothing more to wait for)."""
        record = self._read(job_id)
        return record is None or record["state"] in ("succeeded", "failed")

    def _disrupt(self, scenario: str) -> str:
        """Apply the mid-run part of `scenario`; returns a short description."""
        assert self.workers is not None and self.redis_server is not None
        assert self.admin is not None
        rng = self.rng
        if scenario == "kill-worker":
            time.sleep(rng.uniform(*DISRUPT_AFTER_S))
            victim = rng.choice(self.workers.alive())
            self.workers.kill(victim)
            replacement = self.workers.add()
            return f"killed bench{victim}, started bench{replacement}"
        if scenario == "kill-all":
            return self._kill_all()
        if scenario == "cut-connections":
            cuts = rng.randint(2, 3)
            killed = []
            admin = self.admin
            for _ in range(cuts):
                time.sleep(rng.uniform(0.3, 1.0))
                killed.append(retrying(
                    lambda: admin.client_kill_filter(_type="normal", skipme=True),
                    "CLIENT KILL"))
            return f"cut client connections {cuts} times ({'+'.join(map(str, killed))})"
        if scenario == "restart-redis":
            time.sleep(rng.uniform(*DISRUPT_AFTER_S))
            began = time.monotonic()
            self.redis_server.restart()
            return f"restarted redis-server ({time.monotonic() - began:.1f} s)"
        return ""

    def _kill_all(self) -> str:
        """SIGKILL every worker (whole process groups) while every pool slot is in a
        slow generate, then start as many new ones at once. Notes the jobs whose run
        lock a killed worker held, and how far each had got (generates + polls)."""
        assert self.workers is not None and self.standin is not None
        assert self.admin is not None
        workers, admin, standin = self.workers, self.admin, self.standin
        victims = workers.alive()
        slots = len(victims) * self.concurrency
        deadline = time.monotonic() + 10
        in_flight = self._generates_before + slots
        while standin.counts()["generate"] < in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        for victim in victims:
            workers.kill(victim)
        self._killed_at = time.monotonic()
        names = {f"bench{victim}" for victim in victims}
        self._held_at_kill = {}
        for job_id in self._round_jobs:
            raw: Any = retrying(functools.partial(admin.get, keys.lock(job_id)), "GET lock")
            token = raw.decode() if isinstance(raw, bytes) else str(raw or "")
            # A run's lock token starts with its holder id: "<node>|pool|<pid>|...".
            if token.split("|", 1)[0].split("@", 1)[0] in names:
                record = self._read(job_id) or {}
                self._held_at_kill[job_id] = (int(record.get("attempts") or 0)
                                              + int(record.get("polls") or 0))
        started = workers.add_many(len(victims))
        return (f"killed every worker ({len(victims)}, {len(self._held_at_kill)} runs in "
                f"flight), started bench{'/'.join(map(str, started))}")

    def _ran_again(self, job_id: str) -> bool:
        """True when a job held by a killed worker made a new call or ended."""
        record = self._read(job_id)
        if record is None or record["state"] in ("succeeded", "failed"):
            return True
        steps = int(record.get("attempts") or 0) + int(record.get("polls") or 0)
        return steps > self._held_at_kill[job_id]

    def _prepare(self, scenario: str) -> tuple[str, str | None]:
        """Set up the before-enqueue part of `scenario` (faults, callback mode).

        Returns:
            A short description, and the callback mode set (None if unchanged).
        """
        assert self.standin is not None
        rng = self.rng
        if scenario == "api-faults":
            injected = []
            for fault in API_FAULTS:
                times = rng.randint(2, 5)
                self.standin.inject("any", fault, times=times)
                injected.append(f"{fault}x{times}")
            slow = rng.randint(2, 3)
            self.standin.inject("generate", "slow", times=slow, delay_s=SLOW_DELAY_S)
            return f"faults {' '.join(injected)} slow({SLOW_DELAY_S:g}s)x{slow}", None
        if scenario == "kill-all":
            self._generates_before = self.standin.counts()["generate"]
            slots = self.worker_count * self.concurrency
            self.standin.inject("generate", "slow", times=slots, delay_s=KILL_ALL_IN_FLIGHT_S)
            return f"slow({KILL_ALL_IN_FLIGHT_S:g}s)x{slots}", None
        if scenario == "callbacks":
            mode = rng.choice(sorted(CALLBACK_MODES))
            self.standin.set_callback_mode(mode, CALLBACK_MODES[mode])
            return f"callbacks {mode}", mode
        return "", None

    def _replace_dead(self, number: int, totals: Totals) -> None:
        """Replace workers that exited on their own (counted as unexpected exits)."""
        assert self.workers is not None
        for index, process in enumerate(self.workers.processes):
            if index not in self.workers.killed and process.poll() is not None:
                totals.unexpected_exits += 1
                log = self.workers.log_path(index).read_text(errors="replace")
                fatal = [line for line in log.splitlines() if "CRITICAL/" in line]
                totals.problems.append(
                    f"worker bench{index} exited by itself with {process.returncode} "
                    f"(seen after round {number}); its last CRITICAL line: "
                    f"{fatal[-1] if fatal else 'none'}")
                stderr(f"!! worker bench{index} exited with {process.returncode}; replacing")
                self.workers.killed.add(index)
                self.workers.add()

    def run_round(self, number: int, totals: Totals) -> None:
        """One round: prepare, enqueue, disrupt, wait, clear, check; adds to `totals`."""
        assert self.standin is not None
        scenario = self.rng.choice(self.scenarios)
        detail, mode = self._prepare(scenario)
        began = time.monotonic()
        jobs = self._enqueue(self.batch)
        self._round_jobs = list(jobs)
        disruption = self._disrupt(scenario)
        detail = "; ".join(d for d in (detail, disruption) if d)
        if scenario == "kill-all":
            self._measure_recovery(totals)
        wait_all(self._ended, list(jobs), ROUND_TIMEOUT_S, WAIT_INTERVAL_S)
        drained_s = time.monotonic() - began
        if scenario == "kill-all":
            totals.kill_all_drain_s.append(time.monotonic() - self._killed_at)
        finished: dict[str, Any] = {}
        for job_id in jobs:
            record = self._read(job_id)
            if record is not None:
                finished[job_id] = record.get("finished_at")
        self.standin.clear_faults()
        self.standin.set_callback_mode("send")
        if scenario == "callbacks":
            time.sleep(max(CALLBACK_MODES.values()) + LATE_CALLBACK_S)
        tally = self._check(number, scenario, jobs, finished, totals)
        tally.rounds = 1
        totals.by_scenario[scenario].add(tally)
        totals.round_seconds.append(drained_s)
        if mode is not None:
            totals.callback_modes[mode] += 1
        self._replace_dead(number, totals)
        memory = self.worker_memory()
        if number == 1:
            totals.memory_warm = memory
        flag = "  !! PROMISE BROKEN" if tally.broken() else ""
        stderr(f"{time.strftime('%H:%M:%S')} round {number:3d} {scenario:15s} "
               f"{tally.jobs} jobs: {tally.succeeded} ok, "
               f"{tally.failed} failed, {tally.lost} lost, {tally.stuck} stuck, "
               f"{tally.paid_twice} paid twice; {drained_s:.1f} s; {detail}; workers "
               f"{memory.describe()}{flag}")

    def _measure_recovery(self, totals: Totals) -> None:
        """Wait until every job the killed workers held has run again; note the time."""
        held = list(self._held_at_kill)
        done_at, _ = wait_all(self._ran_again, held, ROUND_TIMEOUT_S, WAIT_INTERVAL_S / 2)
        totals.kill_all_held += len(held)
        totals.kill_all_recovery_s.append(done_at - self._killed_at)
        stderr(f"  kill-all: {len(held)} held jobs ran again "
               f"{done_at - self._killed_at:.1f} s after the kill")

    def _check(self, number: int, scenario: str, jobs: dict[str, str],
               finished: dict[str, Any], totals: Totals) -> Tally:
        """The promise for one round's `jobs`; problems go to ``totals.problems``."""
        assert self.standin is not None
        paid = self.standin.paid()
        tally = Tally(jobs=len(jobs))
        where = f"round {number} ({scenario})"
        for job_id, task_id in jobs.items():
            record = self._read(job_id)
            if record is None:
                tally.lost += 1
                totals.problems.append(f"{where}: LOST job {job_id} (music task {task_id})")
            elif record["state"] == "succeeded":
                tally.succeeded += 1
            elif record["state"] == "failed":
                tally.failed += 1
                totals.failed_by_kind[str((record.get("error") or {}).get("kind"))] += 1
            else:
                tally.stuck += 1
                totals.problems.append(
                    f"{where}: STUCK job {job_id} (music task {task_id}) in state "
                    f"{record['state']}, waiting_for={record.get('waiting_for')}, "
                    f"attempts={record.get('attempts')}, polls={record.get('polls')}, "
                    f"cover task {record.get('cover_task_id')}, "
                    f"updated {record.get('updated_at')}")
            if paid.get(task_id, 0) > 1:
                tally.paid_twice += 1
                totals.problems.append(f"{where}: PAID {paid[task_id]} TIMES for music task "
                                       f"{task_id} (job {job_id})")
            before = finished.get(job_id)
            if (record is not None and before is not None
                    and record.get("finished_at") != before):
                tally.re_ended += 1
                totals.problems.append(f"{where}: re-ended job {job_id}: finished_at "
                                       f"{before} -> {record.get('finished_at')}")
        return tally

    def run(self, minutes: float, totals: Totals) -> None:
        """Start everything, then run rounds until `minutes` have passed."""
        self.start()
        totals.memory_start = self.worker_memory()
        totals.redis_start_b = self.redis_used_memory()
        stderr(f"workers up: {totals.memory_start.describe()}; Redis "
               f"{format_mb(totals.redis_start_b, 1)} MB; soaking for {minutes:g} min")
        deadline = time.monotonic() + minutes * 60
        number = 0
        while time.monotonic() < deadline:
            number += 1
            self.run_round(number, totals)

    def measure_end(self, totals: Totals) -> None:
        """Worker RSS and Redis memory at the end (what can still be measured)."""
        if self.workers is not None:
            totals.memory_end = self.worker_memory()
        if self.admin is not None and self.redis_server is not None:
            with contextlib.suppress(Exception):
                totals.redis_end_b = self.redis_used_memory(within_s=5.0)
