"""The report of `bench.perf`: one table of every part's figures, and the profile.

Each ``table_*`` function adds one part's rows from its runs' result dicts (as
the runs printed them, JSON); a run that broke gives one "error" row and its
error is printed under the table by `bench.perf`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.perf_profile import PROFILE_RATE_HZ
from bench.perf_throughput import THROUGHPUT_POLL_S
from kie_covers.worker.table import render

#: Redis commands listed per pipeline in the throughput part.
REDIS_TOP = 8
#: Targets: throughput of ours over plain (at least), enqueue median of ours over a
#: bare ``.delay()`` (at most), callback latency p99 in ms and worker RSS growth in MB
#: (under).
THROUGHPUT_RATIO_MIN = 0.8
ENQUEUE_RATIO_MAX = 2.0
CALLBACK_P99_MAX_MS = 100.0
RSS_GROWTH_MAX_MB = 10.0


@dataclass
class Table:
    """Rows of the one table: part, measure, ours, baseline, ratio, target, met."""

    rows: list[list[str]] = field(default_factory=list)

    def add(self, part: str, measure: str, ours: str, baseline: str = "", ratio: str = "",
            target: str = "", met: bool | None = None) -> None:
        """One row; `met` None leaves the column empty."""
        verdict = "" if met is None else ("yes" if met else "NO")
        self.rows.append([part, measure, ours, baseline, ratio, target, verdict])

    def render(self) -> str:
        """The table as text."""
        return render(["part", "measure", "ours", "baseline", "ours/baseline", "target",
                       "met"], self.rows)


def fmt(value: Any, digits: int = 1) -> str:
    """A number with `digits` decimals (default 1), or ``-`` for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _rate(result: dict[str, Any], key: str) -> float | None:
    """Covers per second over the seconds at `key` of `result` (None without them)."""
    seconds = result.get(key)
    return result["covers"] / seconds if seconds else None


def table_throughput(table: Table, ours: dict[str, Any], plain: dict[str, Any]) -> None:
    """Part 1 rows."""
    part = "1 throughput"
    if "error" in ours or "error" in plain:
        table.add(part, "error (see below)", "", "")
        return
    plain_rate = _rate(plain, "seconds_ended")
    for key, label in (("seconds_ended", "covers/s, first generate -> last job ended"),
                       ("seconds_notified", "covers/s, ... -> last app notice (ours)")):
        rate = _rate(ours, key)
        ratio = rate / plain_rate if rate and plain_rate else None
        table.add(part, label, fmt(rate), fmt(plain_rate), fmt(ratio, 2),
                  f">= {THROUGHPUT_RATIO_MIN:g}", None if ratio is None
                  else ratio >= THROUGHPUT_RATIO_MIN)
    for key, label in (("cpu_ms_workers", "CPU ms/cover, workers (main + pool)"),
                       ("cpu_ms_redis", "CPU ms/cover, redis-server")):
        ratio = ours[key] / plain[key] if plain[key] else None
        table.add(part, label, fmt(ours[key], 2), fmt(plain[key], 2), fmt(ratio, 2))
    table.add(part, "CPU ms/cover, covers web", fmt(ours["cpu_ms_web"], 2), "-")
    per_cover = [sum(r["redis_commands"].values()) / r["covers"] for r in (ours, plain)]
    table.add(part, "Redis commands per cover (enqueue included)", fmt(per_cover[0]),
              fmt(per_cover[1]), fmt(per_cover[0] / per_cover[1], 2))
    for label, r in (("ours", ours), ("plain", plain)):
        top = Counter(r["redis_commands"]).most_common(REDIS_TOP)
        table.add(part, f"  top Redis commands per cover, {label}",
                  ", ".join(f"{name} {n / r['covers']:.1f}" for name, n in top))
    table.add(part, "succeeded / failed / unfinished",
              f"{ours['succeeded']}/{ours['failed']}/{ours['unfinished']}",
              f"{plain['succeeded']}/{plain['failed']}/{plain['unfinished']}")


def table_enqueue(table: Table, result: dict[str, Any]) -> None:
    """Part 2 rows."""
    part = "2 enqueue"
    if "error" in result:
        table.add(part, "error (see below)", "")
        return
    ours, bare = result["ours"], result["bare"]
    for key, label in (("median_us", "µs per call, median"), ("p99_us", "µs per call, p99")):
        ratio = ours[key] / bare[key]
        table.add(part, label + " (vs bare .delay)", fmt(ours[key], 0), fmt(bare[key], 0),
                  fmt(ratio, 2), f"<= {ENQUEUE_RATIO_MAX:g}x",
                  ratio <= ENQUEUE_RATIO_MAX if key == "median_us" else None)


def table_latency(table: Table, callback: dict[str, Any], polling: dict[str, Any]) -> None:
    """Part 3 rows."""
    part = "3 latency"
    for result, label in ((callback, "callbacks"), (polling, "polling only")):
        if "error" in result:
            table.add(part, f"{label}: error (see below)", "")
            continue
        where = (f"{label} (poll {result['poll_interval_s']:g}s), "
                 "cover done -> finished_at, ms")
        table.add(part, f"{where}: median", fmt(result["median_ms"]))
        is_callbacks = result is callback
        table.add(part, f"{where}: p99", fmt(result["p99_ms"]), "", "",
                  f"< {CALLBACK_P99_MAX_MS:g}" if is_callbacks else "",
                  result["p99_ms"] < CALLBACK_P99_MAX_MS if is_callbacks else None)
        table.add(part, f"{where}: max; jobs ended by a poll",
                  f"{fmt(result['max_ms'])}; {result['ended_by_poll']}/{result['jobs']}")
        table.add(part, f"{label}: first {result['warmup_jobs']} jobs after start "
                  "(apart), median / max ms",
                  f"{fmt(result['warmup_median_ms'])} / {fmt(result['warmup_max_ms'])}")


def table_calls(table: Table, runs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Part 4 rows: calls per ended cover."""
    part = "4 API calls"
    for label, result in runs:
        if "error" in result:
            table.add(part, f"{label}: error (see below)", "")
            continue
        ended = result.get("succeeded", 0) + result.get("failed", 0) or 1
        generates = result["generate_calls"] / ended
        polls = result["record_info_calls"] / ended
        table.add(part, f"{label}: generate per cover", fmt(generates, 3), "", "", "= 1",
                  result["generate_calls"] == ended)
        callbacks = "callbacks" in label
        table.add(part, f"{label}: record-info per cover", fmt(polls, 3), "", "",
                  "<= 1" if callbacks else "", polls <= 1 if callbacks else None)


def table_scale(table: Table, result: dict[str, Any]) -> None:
    """Part 5 rows."""
    part = "5 in flight"
    if "error" in result:
        table.add(part, "error (see below)", "")
        return
    n = result["covers"]
    table.add(part, f"covers in flight (all submitted: {n - result['not_submitted']})", str(n))
    table.add(part, "enqueue time, s (µs per call)",
              f"{fmt(result['enqueue_s'])} ({fmt(result['enqueue_us_per_call'], 0)})")
    table.add(part, "from first enqueue to all submitted, s", fmt(result["submitted_s"]))
    table.add(part, "worker RSS MB: start / warm / peak / end",
              " / ".join(fmt(result[k]) for k in ("rss_start_mb", "rss_warm_mb", "rss_peak_mb",
                                                   "rss_end_mb")))
    kinds = result["rss_by_process"]
    table.add(part, "worker RSS MB by kind, start / warm / end",
              ", ".join(f"{kind} " + " / ".join(fmt(mb) for mb in values)
                        for kind, values in kinds.items()))
    growth = result["rss_peak_mb"] - result["rss_start_mb"]
    table.add(part, "worker RSS growth, peak - start, MB", fmt(growth), "", "",
              f"< {RSS_GROWTH_MAX_MB:g}", growth < RSS_GROWTH_MAX_MB)
    table.add(part, "worker RSS growth, peak - warm, MB",
              fmt(result["rss_peak_mb"] - result["rss_warm_mb"]))
    table.add(part, "Redis used_memory MB: before -> after (bytes/job)",
              f"{fmt(result['redis_start_mb'])} -> {fmt(result['redis_end_mb'])} "
              f"({fmt(result['redis_bytes_per_job'], 0)})")
    twice = (result["generate_calls"] - n, result["paid_twice"], result["generate_400"],
             result["attempts_over_1"])
    table.add(part, "generate calls - covers; paid twice; 400s; jobs >1 attempt",
              "; ".join(str(x) for x in twice), "", "", "0; 0; 0; 0", not any(twice))


def profile_text(result: dict[str, Any]) -> str:
    """The profile findings as text: shares of samples and cost per cover (or call)."""
    if "error" in result:
        return f"profile: error: {result['error']}"
    prof = result["profile"]
    lines: list[str] = []

    def block(title: str, rows: list[list[Any]], per: float, unit: str) -> None:
        lines.append(f"  {title} (share of samples, {unit}):")
        lines.extend(f"    {share * 100:5.1f}%  {share * per:7.2f}  {label}"
                     for label, share in rows)

    worker = prof["worker"]
    per_cover = prof["worker_cpu_ms_per_cover"]
    lines.append(f"profile of worker 0 (main + pool processes) during the drain: py-spy "
                 f"{PROFILE_RATE_HZ} Hz, {worker['samples']} samples; the workers used "
                 f"{per_cover:.2f} CPU ms per cover (under the profiler), split by worker "
                 "0's shares")
    block("by process and thread", worker["roles"], per_cover, "ms/cover")
    block("deepest product frame -> what it called", worker["boundary"], per_cover,
          "ms/cover")
    block("what the libraries were doing (deepest celery/kombu/... frame)",
          worker["landmarks"], per_cover, "ms/cover")
    block("product functions, inclusive", worker["inclusive"], per_cover, "ms/cover")
    enqueue = prof["enqueue"]
    us = prof["enqueue_us"]
    lines.append(f"profile of enqueue_cover in the driver: {enqueue['samples']} samples; "
                 f"{us:.0f} µs per call (under the profiler)")
    block("deepest product frame -> what it called", enqueue["boundary"], us, "µs/call")
    block("what the libraries were doing", enqueue["landmarks"], us, "µs/call")
    return "\n".join(lines)


def build_table(parts: Sequence[str], results: dict[str, dict[str, Any]]) -> Table:
    """The rows of the chosen `parts` (``profile`` is printed apart, see
    `profile_text`), from the results of their runs, by run name."""
    table = Table()
    if "throughput" in parts:
        table_throughput(table, results["throughput-ours"], results["throughput-plain"])
    if "enqueue" in parts:
        table_enqueue(table, results["enqueue"])
    if "latency" in parts:
        table_latency(table, results["latency-callback"], results["latency-polling"])
    if "calls" in parts:
        table_calls(table, [
            (f"callbacks, throughput run (poll {THROUGHPUT_POLL_S:g}s)",
             results["throughput-ours"]),
            ("callbacks, latency run (poll 30s)", results["latency-callback"]),
            ("polling only, latency run (poll 1s)", results["latency-polling"]),
        ])
    if "scale" in parts:
        table_scale(table, results["scale"])
    return table
