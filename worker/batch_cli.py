"""``covers enqueue --from FILE``: queue a batch of covers from CSV or JSON lines.

    covers enqueue --from songs.csv --callback-url https://app.example/cb
    covers enqueue --from songs.jsonl --skip-bad --wait --timeout 900
    covers enqueue --from songs.csv --tenant acme --priority interactive
    producer | covers enqueue --from - --json

`add_enqueue_from_arguments` adds the options to the ``enqueue`` subparser of
`kie_covers.worker.cli`, whose ``enqueue`` handler calls `run_enqueue_from` when
``--from`` is given.

Output: stdout carries data (the job ids one per line; with ``--wait`` the
summary tables instead; with ``--json`` one JSON object, see `_json_out`; with
``--wait --json`` it also has ``progress``, ``timed_out`` and ``records``, the
`get_cover` record of each job in file order), stderr carries the
rest (bad lines as ``line N: field: message``, ``enqueued N jobs (M skipped)``,
the live progress line). Exit codes as `kie_covers.worker.cli`: 0 every job
enqueued (with ``--wait``: every job succeeded), 1 with ``--wait`` a job failed or
did not end in time, 2 bad input (any bad line without ``--skip-bad``, or a batch
over a size cap of `kie_covers.core.batch`: a line over 8 KiB, over 100,000 lines or
over 64 MiB; nothing is enqueued).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import IO, Any

from kie_covers.core.batch import BatchTooLarge
from kie_covers.core.errors import InvalidPayload
from kie_covers.core.schemas import BULK, PRIORITIES
from kie_covers.core.states import WaitReason
from kie_covers.services.batch import (
    BatchPlan,
    BatchRefused,
    Progress,
    batch_progress,
    batch_records,
    enqueue_batch,
    enqueued_lines,
    read_batch,
)
from kie_covers.worker.table import render

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Seconds between redraws of the progress line on a terminal (about 4 a second).
TTY_REDRAW_S = 0.25
#: Seconds between progress lines when stderr is a file or a pipe (a CI log, say):
#: one line each few seconds instead of a flood of carriage returns.
LOG_REDRAW_S = 5.0
#: Batches up to this many jobs are polled every `TTY_REDRAW_S`; larger ones every
#: `LARGE_POLL_S`, so following 10,000 jobs costs Redis little (the line is still
#: redrawn 4 times a second, for the clock).
SMALL_BATCH = 2000
#: Seconds between polls of a batch larger than `SMALL_BATCH`.
LARGE_POLL_S = 1.0
#: Seconds of history behind the jobs-per-second figure.
RATE_WINDOW_S = 10.0
#: Width of the progress bar, in characters.
BAR_WIDTH = 24
#: Batches at least this big get an "enqueuing N jobs..." line before the enqueue
#: (which takes about 2.5 ms per job, so 10,000 take some 25 s).
SLOW_ENQUEUE = 1000
#: Failed jobs listed after ``--wait`` (the rest: ``covers failures``).
FAILED_SHOWN = 20

#: Short labels for wait reasons in the progress line.
_WAIT_LABELS: dict[str, str] = {
    WaitReason.RATE_SLOT: "rate limit", WaitReason.RATE_LIMITED: "rate limit",
    WaitReason.PAUSED: "paused", WaitReason.MAINTENANCE: "maintenance",
    WaitReason.OUT_OF_CREDITS: "credits", WaitReason.DAILY_CAP: "credits",
}


def positive_seconds(raw: str) -> float:
    """Argparse type: a finite number of seconds greater than 0 (``nan``, ``inf``, 0
    and negatives are refused with exit 2)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds greater than 0, got {raw!r}")
    return value


def positive_count(raw: str) -> int:
    """Argparse type: a whole number of at least 1 (exit 2 otherwise)."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {raw!r}")
    return value


def add_enqueue_from_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--from``, ``--callback-url``, ``--skip-bad``, ``--priority``,
    ``--tenant`` (and ``--wait``, ``--timeout``, ``--json`` unless the parser has
    them) to `parser`.

    Destinations: ``from_file`` (None when not given), ``default_callback_url``
    (so it never collides with the single form's positional ``callback_url``),
    ``skip_bad``, ``priority`` (None when not given: ``bulk`` for a batch,
    ``interactive`` for one job), ``tenant`` (None: the default tenant), ``wait``,
    ``timeout`` (seconds, default 600) and ``json``.
    """
    parser.add_argument("--from", dest="from_file", metavar="FILE",
                        help="queue every cover request in FILE (CSV taskId[,callBackUrl] "
                             "or JSON lines; - for stdin)")
    parser.add_argument("--callback-url", dest="default_callback_url", metavar="URL",
                        help="with --from: callBackUrl for lines that have none")
    parser.add_argument("--skip-bad", action="store_true",
                        help="with --from: queue the good lines even if some are bad")
    parser.add_argument("--priority", choices=PRIORITIES, default=None,
                        help="rate-limit lane: interactive (served first) or bulk "
                             "(default: bulk with --from, else interactive)")
    parser.add_argument("--tenant", metavar="ID", default=None,
                        help="the app's user or organisation; tenants take turns "
                             "(default: the default tenant)")
    # The single-job form of `enqueue` already defines these three; adding them again
    # would be an argparse conflict, and both forms mean the same by them.
    present = parser._option_string_actions
    if "--wait" not in present:
        parser.add_argument("--wait", action="store_true", help="wait until the jobs end")
    if "--timeout" not in present:
        parser.add_argument("--timeout", type=positive_seconds, default=600.0, metavar="S",
                            help="seconds to wait (default 600)")
    if "--json" not in present:
        parser.add_argument("--json", action="store_true", help="print JSON")


def run_enqueue_from(args: argparse.Namespace) -> int:
    """Run ``covers enqueue --from FILE``; returns the exit code (see the module doc).

    Reads ``args.from_file``, ``args.default_callback_url``, ``args.skip_bad``,
    ``args.wait``, ``args.timeout`` (seconds) and ``args.json``;
    ``args.music_task_id`` and ``args.callback_url`` must be None or absent (the
    single-job form).
    """
    source: str = args.from_file
    name = "<stdin>" if source == "-" else source
    if getattr(args, "music_task_id", None) or getattr(args, "callback_url", None):
        _err("covers enqueue: give TASK_ID CALLBACK_URL or --from FILE, not both "
             "(a default URL for the file goes in --callback-url)")
        return EXIT_USAGE
    plan = _read_plan(source, name, args.default_callback_url)
    if plan is None:
        return EXIT_USAGE
    job_ids = _enqueue(plan, name, args.skip_bad, args.priority or BULK, args.tenant)
    if not job_ids:
        return EXIT_USAGE
    _err(f"enqueued {len(job_ids)} jobs ({len(plan.bad)} skipped)")
    if not args.wait:
        if args.json:
            print(json.dumps(_json_out(job_ids, plan), indent=2))
        else:
            print("\n".join(job_ids))
        return EXIT_OK
    return _wait_and_report(job_ids, plan, args.timeout, args.json)


def _read_plan(source: str, name: str, default_callback_url: str | None
               ) -> BatchPlan | None:
    """Read the batch (``-``: stdin) and report its bad lines on stderr; None (after
    saying why) when it cannot be read at all."""
    try:
        plan = read_batch(sys.stdin.buffer if source == "-" else source, default_callback_url)
    except BatchTooLarge as too_large:
        _err(f"covers enqueue: {name}: {too_large.message}")
        return None
    except InvalidPayload as bad:
        _err(f"covers enqueue: --callback-url: {bad.message}")
        return None
    except OSError as err:
        _err(f"covers enqueue: cannot read {name}: {err.strerror or err}")
        return None
    for bad_line in plan.bad:
        for field_name, messages in bad_line.fields.items():
            _err(f"line {bad_line.line_no}: {field_name}: {' '.join(messages)}")
    return plan


def _enqueue(plan: BatchPlan, name: str, skip_bad: bool, priority: str,
             tenant: str | None) -> list[str] | None:
    """Enqueue the plan's rows (lines without their own `priority` or `tenant` take
    these); None (after saying why) when it is refused or empty."""
    if len(plan.rows) >= SLOW_ENQUEUE and (skip_bad or plan.ok):
        # Each job is a Redis script and a broker message (a few ms): say so, rather
        # than sit silent for half a minute on 10,000 lines.
        _err(f"enqueuing {len(plan.rows)} jobs...")
    try:
        job_ids = enqueue_batch(plan, skip_bad=skip_bad, priority=priority, tenant=tenant)
    except BatchRefused:
        _err(f"refused: {_lines(len(plan.bad), 'bad ')} in {name}; nothing enqueued "
             f"(fix {'it' if len(plan.bad) == 1 else 'them'}, or pass --skip-bad to "
             f"enqueue the {_lines(len(plan.rows), 'good ')})")
        return None
    except InvalidPayload as bad:  # --tenant (or --priority) broke its rule
        for field_name, messages in sorted(bad.fields.items()):
            _err(f"covers enqueue: --{field_name}: {' '.join(messages)}")
        return None
    if not job_ids:
        _err(f"covers enqueue: no cover requests in {name}; nothing enqueued")
        return None
    return job_ids


def _wait_and_report(job_ids: Sequence[str], plan: BatchPlan, timeout_s: float,
                     as_json: bool) -> int:
    """Follow the jobs for up to `timeout_s` seconds, then print the summary (or JSON);
    exit 0 only if every job succeeded."""
    progress, timed_out = wait_for_batch(job_ids, timeout_s, sys.stderr)
    if timed_out:
        _err(f"timed out after {timeout_s:g}s: {progress.total - progress.ended} jobs "
             f"not ended yet (they go on; follow them with covers status)")
    if as_json:
        out = _json_out(job_ids, plan)
        out.update(progress=progress.to_dict(), timed_out=timed_out,
                   records=batch_records(job_ids))
        print(json.dumps(out, indent=2))
    else:
        print(summary(progress))
    return EXIT_OK if progress.done == progress.total else EXIT_FAILED


def wait_for_batch(job_ids: Sequence[str], timeout_s: float, stream: IO[str]
                   ) -> tuple[Progress, bool]:
    """Follow the jobs until all ended or `timeout_s` seconds pass, drawing progress.

    On a terminal the line is redrawn in place about 4 times a second; otherwise
    one line is written every `LOG_REDRAW_S` seconds, and a last one at the end.

    Returns:
        (the last progress read, whether the timeout ended the wait).
    """
    tty = stream.isatty()
    line = ProgressLine(stream, tty)
    poll_s = TTY_REDRAW_S if len(job_ids) <= SMALL_BATCH else LARGE_POLL_S
    draw_s = TTY_REDRAW_S if tty else LOG_REDRAW_S
    start = time.monotonic()
    deadline = start + max(0.0, timeout_s)
    progress = batch_progress(job_ids)
    line.sample(start, progress.ended)
    next_poll, next_draw = start + poll_s, start
    try:
        while True:
            now = time.monotonic()
            if now >= next_poll:
                progress = batch_progress(job_ids)
                line.sample(now, progress.ended)
                next_poll = now + poll_s
            if progress.finished or now >= deadline:
                break
            if now >= next_draw:
                line.draw(progress, now - start)
                next_draw = now + draw_s
            time.sleep(max(0.0, min(next_poll, next_draw, deadline) - time.monotonic()))
    finally:
        # Also on Ctrl-C: leave the cursor on a fresh line, not inside the bar.
        line.close(progress, time.monotonic() - start)
    return progress, not progress.finished


class ProgressLine:
    """The live progress line: a bar, the counts and the completion rate.

    Args:
        stream: where to write (stderr).
        tty: redraw in place with ``\\r`` (True) or write whole lines (False).
    """

    def __init__(self, stream: IO[str], tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._width = 0  # of the last line drawn in place, to blank what it leaves
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, ended: int) -> None:
        """Record how many jobs had ended at monotonic time `now` (seconds)."""
        self._samples.append((now, ended))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Jobs ended per second over the last `RATE_WINDOW_S` s (None before 1 s)."""
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 - t0 >= 1.0 else None

    def draw(self, progress: Progress, elapsed_s: float) -> None:
        """Write the line for `progress`, `elapsed_s` seconds into the wait."""
        text = format_progress(progress, elapsed_s, self.rate())
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self.stream.write(f"\r{text}{pad}")
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, progress: Progress, elapsed_s: float) -> None:
        """Draw the final state and end the line."""
        self.draw(progress, elapsed_s)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def format_progress(progress: Progress, elapsed_s: float, rate: float | None) -> str:
    """One line: ``[###x....] 52/100  done 50  failed 2  waiting 10 (rate limit) ...``.

    Args:
        progress: the counts.
        elapsed_s: seconds since the wait began.
        rate: jobs ended per second, or None while unknown.
    """
    total = max(progress.total, 1)
    done_cells = progress.done * BAR_WIDTH // total
    failed_cells = min(BAR_WIDTH - done_cells,
                       -(-(progress.failed + progress.missing) * BAR_WIDTH // total))
    bar = "#" * done_cells + "x" * failed_cells
    bar += "." * (BAR_WIDTH - len(bar))
    parts = [f"[{bar}] {progress.ended}/{progress.total}", f"done {progress.done}",
             f"failed {progress.failed}"]
    waiting = f"waiting {progress.waiting}"
    labels = sorted({_WAIT_LABELS.get(r, r) for r in progress.waiting_for})
    if labels:
        waiting += f" ({', '.join(labels)})"
    parts += [waiting, f"in progress {progress.in_progress}"]
    if progress.missing:
        parts.append(f"missing {progress.missing}")
    speed = "-- jobs/s" if rate is None else f"{rate:.1f} jobs/s"
    left = progress.total - progress.ended
    if rate and left:
        speed += f", {'<1s' if left / rate < 1 else '~' + _duration(left / rate)} left"
    parts += [speed, _duration(elapsed_s)]
    return "  ".join(parts)


def summary(progress: Progress) -> str:
    """The end-of-wait tables: jobs per state, then up to `FAILED_SHOWN` failed jobs."""
    rows: list[list[object]] = [["succeeded", progress.done], ["failed", progress.failed],
                                ["waiting", progress.waiting],
                                ["in progress", progress.in_progress]]
    if progress.missing:
        rows.append(["missing", progress.missing])
    rows.append(["total", progress.total])
    text = render(["state", "jobs"], rows)
    if progress.failed_ids:
        shown = progress.failed_ids[:FAILED_SHOWN]
        failed_rows = []
        for job_id, record in zip(shown, batch_records(shown), strict=True):
            error = (record or {}).get("error") or {}
            failed_rows.append([job_id, (record or {}).get("music_task_id") or "-",
                                error.get("kind", ""), str(error.get("message", ""))[:80]])
        more = (f" ({len(shown)} of {progress.failed}; see covers failures)"
                if progress.failed > len(shown) else "")
        text += f"\n\nfailed jobs{more}:\n" + render(
            ["job", "music task", "kind", "message"], failed_rows)
    return text


def _json_out(job_ids: Sequence[str], plan: BatchPlan) -> dict[str, Any]:
    """``--json``: ``jobs`` (each enqueued line's number, taskId and job id), ``job_ids``
    (the same ids alone) and ``skipped`` (the bad lines)."""
    return {"jobs": enqueued_lines(plan, job_ids), "job_ids": list(job_ids),
            "skipped": [b.to_dict() for b in plan.bad]}


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _lines(count: int, adjective: str = "") -> str:
    return f"{count} {adjective}line{'s' if count != 1 else ''}"


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
