"""Soak run: the chaos scenarios of ``tests/test_chaos.py``, round after round, for minutes.

    python -m bench.soak [--minutes 10] [--workers 3] [--concurrency 2] [--batch 100] [--seed N]

Not a test and not in CI. It starts everything on loopback itself: a private
``redis-server`` (``appendonly yes``), the Kie stand-in in this process (no rate
limit, covers ready after 0.3 s, signed callbacks), the callback endpoint
(``python -m kie_covers.worker.cli web``) and ``--workers`` real ``celery worker`` processes of
``--concurrency`` pool slots each, with the short waits the test suite uses.

Until ``--minutes`` have passed it runs rounds. Each round enqueues ``--batch`` jobs
(distinct music task ids) and applies one scenario picked at random (seeded):

- ``kill-worker``: SIGKILL a random worker (its whole process group) at a random
  moment, then start a replacement;
- ``cut-connections``: ``CLIENT KILL TYPE normal SKIPME yes`` two or three times;
- ``restart-redis``: stop and start the redis-server (SIGTERM, same port and files);
- ``api-faults``: a mix of faults on every Kie endpoint (500, body-500, 455, 429,
  body-429, malformed, html, empty, reset, no-data, a few of each) and a couple of
  generates slower than the client's timeout;
- ``callbacks``: Kie's callbacks dropped, duplicated or delayed 1.2 s.

Then it waits for every job of the round to end, clears the faults and the
callback mode, and checks the promise: every job readable by `get_cover`
(``lost`` otherwise), ended (``stuck`` if not after ROUND_TIMEOUT_S), no music task
paid more than once (``paid twice``). It also counts jobs whose ``finished_at``
changed after they had ended (``re-ended``: a second ending), for information.

At the end it prints the totals and exits 0 when nothing was lost, stuck or paid
twice, else 1 (also on an error or an interrupt). Everything it started is stopped
on every exit path; the temp directory with the logs is kept (and named) when the
exit is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from bench.common import (
    READY_TIMEOUT_S,
    Workers,
    celery_ping,
    clean_env,
    positive_float,
    positive_int,
    start_web,
    stderr,
    stop_all,
    wait_all,
)

if TYPE_CHECKING:
    import redis

    from kie_covers.runtime.redis_server import RedisServer
    from kie_covers.standin import KieStandin

SCENARIOS = ("kill-worker", "cut-connections", "restart-redis", "api-faults", "callbacks")
#: The callBackUrl jobs carry: nothing listens there (outcome notices are refused and
#: given up after COVERS_NOTIFY_MAX_AGE).
CALLBACK_URL = "http://127.0.0.1:9/cb"
#: The Celery queue of the soak's workers.
QUEUE = "covers-soak"
#: Seconds from an accepted generate to the finished cover, in the stand-in.
COVER_SECONDS = 0.3
#: Stand-in credits: far more than any soak uses.
CREDITS = 1e12
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
#: Seconds to keep retrying a read of the job store while Redis is unreachable.
READ_RETRY_S = 30.0

#: Settings of every process (as BASE_ENV in tests/conftest.py, with 8 attempts).
BASE_SETTINGS = {
    "KIE_POLL_INTERVAL": "0.5",
    "KIE_POLL_TIMEOUT": "60",
    "KIE_HTTP_TIMEOUT": "2",
    "COVERS_QUEUE": QUEUE,
    "COVERS_DISPATCH_INTERVAL": "0.1",
    "COVERS_REDISPATCH_AFTER": "7",
    "COVERS_BACKOFF_BASE": "0.2",
    "COVERS_BACKOFF_MAX": "0.5",
    "COVERS_MAINTENANCE_PAUSE": "0.5",
    "COVERS_MAX_ATTEMPTS": "8",
    "COVERS_CREDITS_MAX_WAIT": "60",
    "COVERS_NOTIFY_MAX_AGE": "3",
    "KIE_RATE_LIMIT": "1000/1s",
    "KIE_STATUS_RATE_LIMIT": "1000/1s",
    "COVERS_LOG_LEVEL": "INFO",
}

T = TypeVar("T")


# -- measurements ---------------------------------------------------------------------


def _memory_kb(pid: int) -> tuple[int, int]:
    """Resident set size (VmRSS) and proportional set size (Pss, shared pages divided
    among the processes sharing them) of process `pid`, in kB; (0, 0) if it is gone.
    Pss is 0 where /proc/<pid>/smaps_rollup is missing."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        return 0, 0
    with contextlib.suppress(OSError, ValueError, IndexError), \
            open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    return rss, pss


def _parent_map() -> dict[int, list[int]]:
    """Every process's children, from /proc/<pid>/stat: parent pid -> child pids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _children(pid: int, parents: dict[int, list[int]] | None) -> list[int]:
    """Child pids of `pid`: /proc/<pid>/task/*/children where the kernel has it, else
    from `parents` (see `_parent_map`)."""
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    files = list(task_dir.glob("*/children")) if task_dir.exists() else []
    if files:
        for path in files:
            with contextlib.suppress(OSError, ValueError):
                found.extend(int(p) for p in path.read_text().split())
        return found
    return list((parents or {}).get(pid, []))


@dataclass
class Memory:
    """Memory of a set of processes.

    Attributes:
        rss_kb: sum of their VmRSS, kB (pages shared by a pool's processes count in each).
        pss_kb: sum of their Pss, kB (shared pages split among the sharers).
        processes: how many processes were measured.
        main_rss_kb: the part of rss_kb of the processes given (worker main processes),
            the rest being their descendants (pool children).
    """

    rss_kb: int = 0
    pss_kb: int = 0
    processes: int = 0
    main_rss_kb: int = 0

    def describe(self) -> str:
        """``'487.1 MB RSS (mains 190.2 MB, PSS 210.3 MB), 9 processes'``."""
        return (f"{_mb(self.rss_kb, 1000)} MB RSS (mains {_mb(self.main_rss_kb, 1000)} MB, "
                f"PSS {_mb(self.pss_kb, 1000)} MB), {self.processes} processes")


def tree_memory(pids: Iterable[int]) -> Memory:
    """Memory of the processes `pids` and all their descendants (pool children)."""
    parents = None if list(Path("/proc/self/task").glob("*/children")) else _parent_map()
    seen: set[int] = set()
    roots = set(pids)
    stack = list(roots)
    total = Memory()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        rss, pss = _memory_kb(pid)
        if rss == 0:
            continue
        seen.add(pid)
        total.rss_kb += rss
        if pid in roots:
            total.main_rss_kb += rss
        total.pss_kb += pss
        total.processes += 1
        stack.extend(_children(pid, parents))
    return total


def _mb(kilobytes_or_bytes: float, unit: int) -> str:
    """A size as MB (10^6 bytes) with one decimal; `unit` is the input's bytes per unit."""
    return f"{kilobytes_or_bytes * unit / 1e6:.1f}"


# -- results --------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts for one scenario (or all).

    Attributes:
        rounds: rounds run to the end and checked.
        jobs: jobs enqueued in those rounds.
        succeeded: jobs that ended with a cover.
        failed: jobs that ended without one.
        lost: jobs `get_cover` no longer knew.
        stuck: jobs not ended ROUND_TIMEOUT_S seconds after the disruption.
        paid_twice: jobs whose music task the stand-in charged more than once.
        re_ended: jobs whose ``finished_at`` changed after they had ended.
    """

    rounds: int = 0
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    stuck: int = 0
    paid_twice: int = 0
    re_ended: int = 0

    def add(self, other: Tally) -> None:
        """Add `other`'s counts to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def broken(self) -> bool:
        """True when the promise broke: a job lost, stuck or paid twice."""
        return bool(self.lost or self.stuck or self.paid_twice)


@dataclass
class Totals:
    """Everything the soak measured.

    Attributes:
        by_scenario: a `Tally` per scenario name.
        failed_by_kind: failed jobs per error kind.
        callback_modes: ``callbacks`` rounds per mode.
        problems: one line per lost, stuck, paid-twice or re-ended job.
        memory_start: worker memory (every worker process and pool child) once the
            workers were up, before the first round.
        memory_warm: the same after the first round (the workers' first tasks done).
        memory_end: the same at the end (the workers running then).
        redis_start_b, redis_end_b: Redis ``used_memory``, bytes.
        unexpected_exits: workers that exited without being killed (replaced).
        elapsed_s: seconds from the start of the soak to its end.
        round_seconds: seconds each round took from enqueue until its jobs ended.
        error: why the soak stopped early, if it did.
    """

    by_scenario: dict[str, Tally] = field(
        default_factory=lambda: {name: Tally() for name in SCENARIOS})
    failed_by_kind: Counter[str] = field(default_factory=Counter)
    callback_modes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    memory_start: Memory = field(default_factory=Memory)
    memory_warm: Memory = field(default_factory=Memory)
    memory_end: Memory = field(default_factory=Memory)
    redis_start_b: int = 0
    redis_end_b: int = 0
    unexpected_exits: int = 0
    elapsed_s: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    error: str | None = None

    def total(self) -> Tally:
        """The tallies of every scenario, added up."""
        all_ = Tally()
        for tally in self.by_scenario.values():
            all_.add(tally)
        return all_

    def ok(self) -> bool:
        """True when the soak ran to the end and nothing was lost, stuck or paid twice."""
        return self.error is None and not self.total().broken()


# -- processes --------------------------------------------------------------------------


class SoakWorkers(Workers):
    """`Workers` that can also lose a member to SIGKILL and take on a replacement.

    Replacements get the next index (log ``bench<i>.log``, node ``bench<i>@host``),
    started with the same command line as `Workers.start`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.killed: set[int] = set()

    def alive(self) -> list[int]:
        """Indexes of the workers whose main process is running."""
        return [i for i, p in enumerate(self.processes)
                if i not in self.killed and p.poll() is None]

    def kill(self, index: int) -> None:
        """SIGKILL worker `index` and its pool children (its process group) and reap it."""
        process = self.processes[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.killed.add(index)

    def add(self, timeout_s: float = READY_TIMEOUT_S) -> int:
        """Start one more worker and wait for ``ready.`` in its log; returns its index.

        Raises:
            RuntimeError: when it exits or is not ready after `timeout_s` seconds.
        """
        index = len(self.processes)
        path = self.log_path(index)
        process = self.spawn(index)
        self.processes.append(process)
        self.count = len(self.processes)
        deadline = time.monotonic() + timeout_s
        while "ready." not in path.read_text(errors="replace"):
            if process.poll() is not None:
                raise RuntimeError(f"worker bench{index} exited with {process.returncode}:"
                                   f"\n{self.log_tail(index)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker bench{index} not ready after {timeout_s:g}s")
            time.sleep(0.1)
        return index

    def stop(self) -> None:
        """Stop every worker not killed already (SIGTERM, then SIGKILL after the grace)."""
        stop_all([p for i, p in enumerate(self.processes) if i not in self.killed])



def _retrying(call: Callable[[], T], what: str, within_s: float = READ_RETRY_S) -> T:
    """``call()``, tried again on Redis connection errors for up to `within_s` seconds."""
    import redis

    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError,
                redis.exceptions.BusyLoadingError) as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: Redis unreachable for {within_s:g}s: "
                                   f"{error}") from error
            time.sleep(0.2)


# -- the soak -------------------------------------------------------------------------


class Soak:
    """The services of one soak run and its rounds.

    Args:
        workers: worker processes.
        concurrency: pool slots per worker process.
        batch: jobs per round.
        seed: seed of every random choice (scenarios, moments, victims, fault counts).
        log_dir: temp directory for the logs and Redis's files.
    """

    def __init__(self, workers: int, concurrency: int, batch: int, seed: int,
                 log_dir: Path) -> None:
        self.worker_count = workers
        self.concurrency = concurrency
        self.batch = batch
        self.rng = random.Random(seed)
        self.log_dir = log_dir
        self.redis_server: RedisServer | None = None
        self.standin: KieStandin | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: SoakWorkers | None = None
        self.admin: redis.Redis | None = None

    # -- lifecycle

    def start(self) -> None:
        """Start Redis, the stand-in, the callback endpoint and the workers.

        Puts the settings into this process's environment first (the project reads
        them once, at first use), so `enqueue_cover` and `get_cover` here use the
        same Redis and queue as the workers.
        """
        import redis

        from kie_covers.runtime.redis_server import RedisServer, free_port
        from kie_covers.standin import KieStandin, StandinConfig

        api_key = "soak-" + secrets.token_hex(8)
        hmac_key = "soak-hmac-" + secrets.token_hex(12)
        stderr("starting redis-server and the stand-in")
        self.redis_server = RedisServer(self.log_dir / "redis", appendonly=True).start()
        self.admin = redis.Redis(host="127.0.0.1", port=self.redis_server.port,
                                 socket_timeout=5, socket_connect_timeout=5)
        self.standin = KieStandin(StandinConfig(
            api_keys=(api_key,), rate_limit=None, cover_seconds=COVER_SECONDS,
            credits=CREDITS, webhook_hmac_key=hmac_key)).start()
        web_port = free_port()
        env = clean_env({
            **BASE_SETTINGS,
            "REDIS_URL": self.redis_server.url,
            "KIE_BASE_URL": self.standin.base_url,
            "KIE_API_KEY": api_key,
            "KIE_WEBHOOK_HMAC_KEY": hmac_key,
            "COVERS_CALLBACK_URL": f"http://127.0.0.1:{web_port}/kie/callback",
            "COVERS_STATE_DIR": str(self.log_dir / "state"),
        })
        os.environ.clear()
        os.environ.update(env)
        stderr(f"starting the callback endpoint on 127.0.0.1:{web_port}")
        self.web = start_web(web_port, env, self.log_dir / "web.log")

        from kie_covers.runtime.app import app  # only now: settings are read once per process

        stderr(f"starting {self.worker_count} workers x {self.concurrency} slots")
        self.workers = SoakWorkers("kie_covers.worker", QUEUE, self.worker_count, env, self.log_dir,
                                   loglevel="INFO", concurrency=self.concurrency)
        self.workers.start(lambda: celery_ping(app))

    def stop(self) -> None:
        """Stop everything started (workers first, Redis last); never raises."""
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.workers is not None:
            steps.append(("workers", self.workers.stop))
        if self.web is not None:
            web = self.web
            steps.append(("callback endpoint", lambda: stop_all([web])))
        if self.standin is not None:
            steps.append(("stand-in", self.standin.stop))
        if self.admin is not None:
            steps.append(("admin client", self.admin.close))
        if self.redis_server is not None:
            server = self.redis_server
            steps.append(("redis-server", server.stop))
        for name, step in steps:
            try:
                step()
            except Exception as error:
                stderr(f"stopping the {name}: {type(error).__name__}: {error}")
        if self.redis_server is not None and self.redis_server.process is not None:
            with contextlib.suppress(Exception):
                self.redis_server.stop(hard=True)

    # -- measurements

    def worker_memory(self) -> Memory:
        """Memory of the running workers and their pool children."""
        assert self.workers is not None
        return tree_memory(self.workers.processes[i].pid for i in self.workers.alive())

    def redis_used_memory(self, within_s: float = READ_RETRY_S) -> int:
        """Redis ``INFO memory`` used_memory, bytes (Redis given `within_s` s to answer)."""
        assert self.admin is not None
        admin = self.admin
        info = _retrying(lambda: admin.info("memory"), "INFO memory", within_s)
        return int(info["used_memory"])

    # -- one round

    def _enqueue(self, count: int) -> dict[str, str]:
        """`count` new jobs: job id -> music task id (a retried enqueue is idempotent)."""
        from kie_covers import enqueue_cover

        jobs: dict[str, str] = {}
        for _ in range(count):
            task_id = uuid.uuid4().hex
            job_id = _retrying(functools.partial(enqueue_cover, task_id, CALLBACK_URL), "enqueue")
            jobs[job_id] = task_id
        return jobs

    @staticmethod
    def _read(job_id: str) -> dict[str, Any] | None:
        """`get_cover(job_id)`, None when the job is unknown (lost)."""
        from kie_covers import get_cover
        from kie_covers.core.errors import UnknownJob

        try:
            return _retrying(lambda: get_cover(job_id), f"get_cover({job_id})")
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
        if scenario == "cut-connections":
            cuts = rng.randint(2, 3)
            killed = []
            admin = self.admin
            for _ in range(cuts):
                time.sleep(rng.uniform(0.3, 1.0))
                killed.append(_retrying(
                    lambda: admin.client_kill_filter(_type="normal", skipme=True),
                    "CLIENT KILL"))
            return f"cut client connections {cuts} times ({'+'.join(map(str, killed))})"
        if scenario == "restart-redis":
            time.sleep(rng.uniform(*DISRUPT_AFTER_S))
            began = time.monotonic()
            self.redis_server.restart()
            return f"restarted redis-server ({time.monotonic() - began:.1f} s)"
        return ""

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
        scenario = self.rng.choice(SCENARIOS)
        detail, mode = self._prepare(scenario)
        began = time.monotonic()
        jobs = self._enqueue(self.batch)
        disruption = self._disrupt(scenario)
        detail = "; ".join(d for d in (detail, disruption) if d)
        wait_all(self._ended, list(jobs), ROUND_TIMEOUT_S, WAIT_INTERVAL_S)
        drained_s = time.monotonic() - began
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
               f"{_mb(totals.redis_start_b, 1)} MB; soaking for {minutes:g} min")
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


# -- report -----------------------------------------------------------------------------


def report(totals: Totals, args: argparse.Namespace, argv: list[str], seed: int,
           log_dir: Path, kept: bool) -> str:
    """The totals as printed at the end."""
    from kie_covers.worker.table import render

    headers = ["scenario", "rounds", "jobs", "succeeded", "failed", "lost", "stuck",
               "paid twice", "re-ended"]
    rows: list[list[object]] = []
    for name, t in [*totals.by_scenario.items(), ("total", totals.total())]:
        rows.append([name, t.rounds, t.jobs, t.succeeded, t.failed, t.lost, t.stuck,
                     t.paid_twice, t.re_ended])
    total = totals.total()
    kinds = ", ".join(f"{kind} {n}" for kind, n in totals.failed_by_kind.most_common())
    modes = ", ".join(f"{mode} {n}" for mode, n in sorted(totals.callback_modes.items()))
    rounds = totals.round_seconds
    m0, m1, m2 = totals.memory_start, totals.memory_warm, totals.memory_end
    lines = [
        "",
        f"soak: {args.workers} workers x {args.concurrency} pool slots, batch {args.batch}, "
        f"seed {seed}",
        render(headers, rows),
        "",
        f"failed by error kind: {kinds or 'none'}",
        f"callback modes: {modes or 'none'}",
        "round time (enqueue to all ended), s: "
        + (f"min {min(rounds):.1f}, mean {sum(rounds) / len(rounds):.1f}, "
           f"max {max(rounds):.1f}" if rounds else "none"),
        f"worker RSS total (main + pool children): start {_mb(m0.rss_kb, 1000)} MB, "
        f"end {_mb(m2.rss_kb, 1000)} MB",
        f"  start / after round 1 / end: processes {m0.processes} / {m1.processes} / "
        f"{m2.processes}; RSS of main processes {_mb(m0.main_rss_kb, 1000)} / "
        f"{_mb(m1.main_rss_kb, 1000)} / {_mb(m2.main_rss_kb, 1000)} MB, of pool children "
        f"{_mb(m0.rss_kb - m0.main_rss_kb, 1000)} / {_mb(m1.rss_kb - m1.main_rss_kb, 1000)}"
        f" / {_mb(m2.rss_kb - m2.main_rss_kb, 1000)} MB; PSS {_mb(m0.pss_kb, 1000)} / "
        f"{_mb(m1.pss_kb, 1000)} / {_mb(m2.pss_kb, 1000)} MB",
        f"Redis used_memory: start {_mb(totals.redis_start_b, 1)} MB, "
        f"end {_mb(totals.redis_end_b, 1)} MB",
        f"workers that exited by themselves: {totals.unexpected_exits}",
        f"elapsed: {totals.elapsed_s:.1f} s",
        f"promise (lost = stuck = paid twice = 0): "
        f"{'held' if not total.broken() else 'BROKEN'}",
    ]
    if totals.error:
        lines.append(f"stopped early: {totals.error}")
    if totals.problems:
        lines.append(f"problems ({len(totals.problems)}):")
        lines.extend(f"  {p}" for p in totals.problems[:50])
        if len(totals.problems) > 50:
            lines.append(f"  ... {len(totals.problems) - 50} more in {log_dir}/problems.log")
    if kept:
        lines.append(f"logs kept in {log_dir}")
    lines += [
        "",
        "command: " + shlex.join([Path(sys.executable).name, "-m", "bench.soak", *argv]),
        f"os.cpu_count(): {os.cpu_count()}",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into SystemExit, once: a second signal is ignored so it
    cannot cut the clean-up short. Restores the old handlers on exit."""

    def on_stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(f"stopped by signal {signal.Signals(signum).name}")

    old = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 when nothing was lost, stuck or paid twice, else 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Run the chaos scenarios round after round against real workers, "
                    "Redis and the Kie stand-in, and check the promise after each round.")
    parser.add_argument("--minutes", type=positive_float, default=10.0,
                        help="minutes to keep starting rounds (default %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=3,
                        help="worker processes (default %(default)s)")
    parser.add_argument("--concurrency", type=positive_int, default=2,
                        help="pool slots per worker process (default %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=100,
                        help="jobs per round (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random choices (default: a random one, printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    log_dir = Path(tempfile.mkdtemp(prefix="kie-soak-"))
    stderr(f"soak: seed {seed}, logs in {log_dir}")
    totals = Totals()
    soak = Soak(args.workers, args.concurrency, args.batch, seed, log_dir)
    began = time.monotonic()
    with _stop_signals():
        try:
            soak.run(args.minutes, totals)
        except BaseException as error:  # Ctrl-C and SIGTERM (SystemExit) too: report
            totals.error = f"{type(error).__name__}: {error}".strip()[:2000]
            stderr(f"soak stopped: {totals.error}")
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with contextlib.suppress(Exception):
                soak.measure_end(totals)
            stderr("stopping everything")
            soak.stop()
    totals.elapsed_s = time.monotonic() - began
    ok = totals.ok()
    if totals.problems:
        (log_dir / "problems.log").write_text("\n".join(totals.problems) + "\n")
    # Logs are kept when the exit is not 0, and when something odd happened all the same
    # (a worker that exited by itself, a job that ended twice).
    keep = not ok or bool(totals.problems)
    print(report(totals, args, argv, seed, log_dir, kept=keep), flush=True)
    if not keep:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
