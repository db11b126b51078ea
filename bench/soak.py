"""Soak run: the chaos scenarios of ``tests/test_chaos.py``, round after round, for minutes.

    python -m bench.soak [--minutes 10] [--workers 3] [--concurrency 2] [--batch 100] [--seed N]
                         [--scenarios kill-all,kill-worker,...]

Not a test and not in CI. It starts everything on loopback itself: a private
``redis-server`` (``appendonly yes``), the Kie stand-in in this process (no rate
limit, covers ready after 0.3 s, signed callbacks), the callback endpoint
(``python -m kie_covers.worker.cli web``) and ``--workers`` real ``celery worker`` processes of
``--concurrency`` pool slots each, with the short waits the test suite uses, except
the heartbeat timers (COVERS_HEARTBEAT_INTERVAL, COVERS_DEAD_AFTER), which keep their
defaults, and COVERS_REDISPATCH_AFTER, 60 s (see ``bench.soak_services``).

Until ``--minutes`` have passed it runs rounds. Each round enqueues ``--batch`` jobs
(distinct music task ids) and applies one scenario picked at random (seeded):

- ``kill-worker``: SIGKILL a random worker (its whole process group) at a random
  moment, then start a replacement;
- ``kill-all``: with every pool slot in a slow generate, SIGKILL every worker at once
  (whole process groups), then start as many new ones; it measures how long until
  every job the killed workers held has run again (their heartbeats lapse after
  COVERS_DEAD_AFTER) and until every job of the round has ended;
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

This module is the entry point (the command line, signals, clean-up). The rest
is in `bench.soak_services` (what the soak starts), `bench.soak_rounds` (the
scenarios and the check) and `bench.soak_results` (the counts and the printout);
`bench.proc` reads the workers' memory.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from bench.common import add_pool_options, positive_float, positive_int, stderr
from bench.soak_results import SCENARIOS, Totals, report
from bench.soak_rounds import Soak


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


def _scenarios(raw: str) -> tuple[str, ...]:
    """``--scenarios``: names from SCENARIOS, comma-separated."""
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in SCENARIOS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; use {', '.join(SCENARIOS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 when nothing was lost, stuck or paid twice, else 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Run the chaos scenarios round after round against real workers, "
                    "Redis and the Kie stand-in, and check the promise after each round.")
    parser.add_argument("--minutes", type=positive_float, default=10.0,
                        help="minutes to keep starting rounds (default %(default)s)")
    add_pool_options(parser, workers=3, concurrency=2)
    parser.add_argument("--batch", type=positive_int, default=100,
                        help="jobs per round (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random choices (default: a random one, printed)")
    parser.add_argument("--scenarios", type=_scenarios, default=SCENARIOS,
                        help="comma-separated scenarios rounds pick from (default: all: "
                             f"{','.join(SCENARIOS)})")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    log_dir = Path(tempfile.mkdtemp(prefix="kie-soak-"))
    stderr(f"soak: seed {seed}, logs in {log_dir}")
    totals = Totals()
    soak = Soak(args.workers, args.concurrency, args.batch, seed, log_dir, args.scenarios)
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
