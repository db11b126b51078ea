"""What a soak run counts, and the totals it prints at the end.

A `Tally` per scenario (rounds, jobs, how they ended, and the promise: lost,
stuck, paid twice), `Totals` for the whole run (also worker and Redis memory,
round times, odd events), and `report`, the text printed at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.proc import Memory, format_mb
from kie_covers.worker.table import render

#: The scenarios a round picks from (see `bench.soak_rounds`); here because the
#: totals keep a tally per scenario, also of those no round picked.
SCENARIOS = ("kill-worker", "kill-all", "cut-connections", "restart-redis", "api-faults",
             "callbacks")
#: Problem lines printed at the end; all of them go to ``problems.log``.
PROBLEMS_SHOWN = 50


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
    #: ``kill-all`` rounds: seconds from the kill until every job the killed workers
    #: held had run again, and until every job of the round had ended.
    kill_all_recovery_s: list[float] = field(default_factory=list)
    kill_all_drain_s: list[float] = field(default_factory=list)
    #: ``kill-all`` rounds: jobs the killed workers held (runs in progress), in all.
    kill_all_held: int = 0
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


def _spread(values: list[float]) -> str:
    """``min / median / max`` of `values`, one decimal."""
    ordered = sorted(values)
    return f"{ordered[0]:.1f} / {ordered[len(ordered) // 2]:.1f} / {ordered[-1]:.1f}"


def report(totals: Totals, args: argparse.Namespace, argv: list[str], seed: int,
           log_dir: Path, kept: bool) -> str:
    """The totals as printed at the end.

    Args:
        totals: what the soak measured.
        args: its command line, parsed (workers, concurrency, batch).
        argv: its command line, as given (printed back).
        seed: the seed of its random choices.
        log_dir: its temp directory.
        kept: whether `log_dir` is kept (then it is named).
    """
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

    def three(kb: Callable[[Memory], int]) -> str:
        """``start / after round 1 / end`` of one measure in kB, as MB."""
        return " / ".join(format_mb(kb(m), 1000) for m in (m0, m1, m2))

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
        "kill-all (every worker SIGKILLed mid-generate, new ones started): "
        + (f"{len(totals.kill_all_recovery_s)} rounds, {totals.kill_all_held} held jobs; "
           f"all ran again after {_spread(totals.kill_all_recovery_s)} s, all ended "
           f"after {_spread(totals.kill_all_drain_s)} s (from the kill)"
           if totals.kill_all_recovery_s else "no round"),
        f"worker RSS total (main + pool children): start {format_mb(m0.rss_kb, 1000)} MB, "
        f"end {format_mb(m2.rss_kb, 1000)} MB",
        f"  start / after round 1 / end: processes {m0.processes} / {m1.processes} / "
        f"{m2.processes}; RSS of main processes {three(lambda m: m.main_rss_kb)} MB, "
        f"of pool children {three(lambda m: m.rss_kb - m.main_rss_kb)} MB; "
        f"PSS {three(lambda m: m.pss_kb)} MB",
        f"Redis used_memory: start {format_mb(totals.redis_start_b, 1)} MB, "
        f"end {format_mb(totals.redis_end_b, 1)} MB",
        f"workers that exited by themselves: {totals.unexpected_exits}",
        f"elapsed: {totals.elapsed_s:.1f} s",
        f"promise (lost = stuck = paid twice = 0): "
        f"{'held' if not total.broken() else 'BROKEN'}",
    ]
    if totals.error:
        lines.append(f"stopped early: {totals.error}")
    if totals.problems:
        lines.append(f"problems ({len(totals.problems)}):")
        lines.extend(f"  {p}" for p in totals.problems[:PROBLEMS_SHOWN])
        if len(totals.problems) > PROBLEMS_SHOWN:
            lines.append(f"  ... {len(totals.problems) - PROBLEMS_SHOWN} more in "
                         f"{log_dir}/problems.log")
    if kept:
        lines.append(f"logs kept in {log_dir}")
    lines += [
        "",
        "command: " + shlex.join([Path(sys.executable).name, "-m", "bench.soak", *argv]),
        f"os.cpu_count(): {os.cpu_count()}",
    ]
    return "\n".join(lines)
