"""The ``covers`` command.

    covers worker [CELERY WORKER OPTIONS]   start a worker (same as celery -A worker worker)
    covers beat                             start the beat scheduler
    covers web [--host H] [--port P]        serve the callback endpoint under waitress
    covers metrics [--host H] [--port P]    serve Prometheus metrics (/metrics)
    covers standin [--port P] ...           run the Kie stand-in (no credits spent)
    covers enqueue TASK_ID CALLBACK_URL [--priority P] [--tenant T] [--wait] [--timeout S]
                   [--json]
    covers enqueue --from FILE [--callback-url URL] [--skip-bad] [--priority P] [--tenant T]
                   [--wait] [--json]
    covers status JOB_ID [JOB_ID ...] [--json]
    covers failures [--kind K] [--code C] [--limit N] [--json]
    covers retry JOB_ID... | --kind K | --code C | --all-retryable
    covers forget JOB_ID...
    covers demo [--count N]                 everything, on a private Redis and the stand-in

Exit codes: 0 ok, 1 a job failed or did not finish, 2 bad input or settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
import waitress
from redis.backoff import NoBackoff
from redis.retry import Retry

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.config import SettingsError, get_settings
from kie_covers.core.errors import InvalidPayload, UnknownJob
from kie_covers.core.schemas import INTERACTIVE
from kie_covers.core.states import JobState
from kie_covers.runtime import logs
from kie_covers.runtime.connections import redis_url
from kie_covers.services.failures import (
    count_failures,
    forget_jobs,
    list_failures,
    retry_jobs,
    retry_where,
)
from kie_covers.standin import main as standin_main
from kie_covers.worker import metrics_server, web
from kie_covers.worker.batch_cli import (
    add_enqueue_from_arguments,
    positive_count,
    positive_seconds,
    run_enqueue_from,
)
from kie_covers.worker.demo import run_demo
from kie_covers.worker.table import render

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: A subcommand's handler: the parsed arguments in, the exit code out.
Handler = Callable[[argparse.Namespace], int]

#: Subcommands that talk to Redis: `main` checks it answers before running them.
REDIS_COMMANDS = frozenset({"enqueue", "status", "failures", "retry", "forget", "metrics",
                            "web", "worker", "beat"})
#: Seconds the start-up check waits for Redis to connect and answer PING (no retries),
#: so a wrong REDIS_URL is one line and exit 2 at once, not a traceback 10 s later.
REDIS_CHECK_TIMEOUT_S = 2.0
#: Redis errors that mean "cannot reach Redis" (wrong address, down, timing out).
REDIS_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
#: Highest TCP port number.
MAX_PORT = 65535


def port_number(raw: str) -> int:
    """Argparse type: a TCP port, 1 to 65535 (exit 2 otherwise, never wrapped)."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {raw!r}") from None
    if not 1 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to {MAX_PORT}, got {raw!r}")
    return value


def redis_address(url: str) -> str:
    """Where `url` points, as ``host:port`` (or a socket path): never a user or password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or "?"
    try:
        port = parts.port or 6379
    except ValueError:  # a port that is no number: show none rather than fail here
        port = 6379
    host = parts.hostname or "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unreachable_message(url: str, error: BaseException) -> str:
    """The one line for Redis out of reach: the address and the reason, no secrets."""
    if isinstance(error, redis.AuthenticationError):
        reason = "authentication failed"
    elif isinstance(error, redis.TimeoutError):
        reason = "timed out"
    else:
        # redis-py says "Error 111 connecting to host:port. Connection refused.": keep
        # the last sentence; it names no credentials, and any password is masked anyway.
        reason = str(error).strip().rstrip(".").rsplit(". ", 1)[-1] or type(error).__name__
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
    return (f"covers: cannot reach Redis at REDIS_URL {redis_address(url)} ({reason}); "
            f"is it running, and is REDIS_URL right?")


def check_redis(url: str, timeout_s: float = REDIS_CHECK_TIMEOUT_S) -> None:
    """PING Redis at `url` once, waiting at most `timeout_s` seconds (default 2) to
    connect and to read, with no retries.

    Raises:
        redis.ConnectionError: or redis.TimeoutError: Redis cannot be reached.
    """
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                  socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    finally:
        client.close()


def _celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "kie_covers.worker", *args]


def cmd_worker(args: argparse.Namespace) -> int:
    """Check the settings, then become a Celery worker on COVERS_QUEUE.

    ``args.extra``: the rest of the command line, passed to ``celery worker`` as is.
    """
    settings = get_settings()
    settings.require_api_key()
    redis_url()  # starts the private Redis when REDIS_URL is unset, and exports it
    argv = _celery_argv("worker", "-Q", settings.queue, "--loglevel", settings.log_level,
                        *args.extra)
    os.execv(sys.executable, argv)
    return EXIT_OK  # pragma: no cover - execv does not return


def cmd_beat(args: argparse.Namespace) -> int:
    """Become the Celery beat scheduler (its schedule file lives in COVERS_STATE_DIR).

    ``args.extra``: the rest of the command line, passed to ``celery beat`` as is.
    """
    settings = get_settings()
    redis_url()
    os.makedirs(settings.state_dir, exist_ok=True)
    schedule = os.path.join(settings.state_dir, "celerybeat-schedule")
    os.execv(sys.executable, _celery_argv("beat", "--schedule", schedule,
                                          "--loglevel", settings.log_level, *args.extra))
    return EXIT_OK  # pragma: no cover


def cmd_standin(args: argparse.Namespace) -> int:
    """Run the Kie stand-in; ``args.extra`` are its own options (see `kie_covers.standin`)."""
    return standin_main(args.extra)


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the callback endpoint with waitress until interrupted.

    ``args.host`` (default 127.0.0.1), ``args.port`` (default $PORT, else 8000) and
    ``args.threads`` (default 8).
    """
    logs.configure()
    print(f"callback endpoint on http://{args.host}:{args.port}/kie/callback", flush=True)
    callback_app = web.make_app()
    # Limits on bodies, headers, connections and idle time (see waitress_options).
    waitress.serve(callback_app, host=args.host, port=args.port, threads=args.threads,
                   ident="kie-covers", **callback_app.waitress_options())
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """Serve the Prometheus endpoint (/metrics) for the whole cluster, from Redis.

    ``args.host`` (default 127.0.0.1) and ``args.port`` (default None:
    COVERS_METRICS_PORT; exit 2 when neither is set).
    """
    settings = get_settings()
    port = args.port or settings.metrics_port
    if port is None:
        print("covers metrics: set COVERS_METRICS_PORT (workers collect only then)",
              file=sys.stderr)
        return EXIT_USAGE
    logs.configure()
    print(f"metrics on http://{args.host}:{port}/metrics", flush=True)
    waitress.serve(metrics_server.make_app(), host=args.host, port=port, threads=2,
                   ident="kie-covers-metrics")
    return EXIT_OK


def _print_records(records: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(records if len(records) > 1 else records[0], indent=2))
        return
    rows = [[r["job_id"], r["music_task_id"], r["state"],
             (r["error"] or {}).get("message", "") if r["state"] == JobState.FAILED
             else " ".join(r["images"]) or (r.get("waiting_for") or "")]
            for r in records]
    print(render(["job", "music task", "state", "images / reason"], rows))


def cmd_enqueue(args: argparse.Namespace) -> int:
    """Queue one cover (``args.music_task_id``, ``args.callback_url``), or a batch
    (``args.from_file``: `kie_covers.worker.batch_cli.run_enqueue_from`).

    ``args.priority`` (None: ``interactive``) and ``args.tenant`` (None: the default
    tenant) say where it waits its turn. With ``args.wait``, block until the job ends
    or ``args.timeout`` seconds (default 600) pass; exit 1 unless it succeeded.
    ``args.json`` prints JSON.
    """
    if args.from_file is not None:
        return run_enqueue_from(args)
    if args.music_task_id is None or args.callback_url is None:
        print("covers enqueue: give TASK_ID CALLBACK_URL, or --from FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        job_id = enqueue_cover(args.music_task_id, args.callback_url,
                               priority=args.priority or INTERACTIVE, tenant=args.tenant)
    except InvalidPayload as bad:
        print(f"refused: {bad.message}", file=sys.stderr)
        for name, messages in sorted(bad.fields.items()):
            print(f"  {name}: {' '.join(messages)}", file=sys.stderr)
        return EXIT_USAGE
    if not args.wait:
        print(json.dumps({"job_id": job_id}) if args.json else job_id)
        return EXIT_OK
    record = wait_for_cover(job_id, timeout_s=args.timeout)
    _print_records([record], args.json)
    return EXIT_OK if record["state"] == JobState.SUCCEEDED else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    """Show jobs ``args.job_ids``; exit 1 if any is unknown or failed."""
    records, code = [], EXIT_OK
    for job_id in args.job_ids:
        try:
            records.append(get_cover(job_id))
        except UnknownJob as missing:
            print(str(missing), file=sys.stderr)
            code = EXIT_FAILED
    if records:
        _print_records(records, args.json)
    if any(r["state"] == JobState.FAILED for r in records):
        code = EXIT_FAILED
    return code


def cmd_failures(args: argparse.Namespace) -> int:
    """List recorded failures, newest first: at most ``args.limit`` (default 50), of
    ``args.kind`` / ``args.code`` when given."""
    records = list_failures(args.kind, args.code, limit=args.limit)
    if args.json:
        print(json.dumps(records, indent=2))
        return EXIT_OK
    total = count_failures(args.kind, args.code)
    rows = [[r["job_id"], r["music_task_id"] or "-", (r["error"] or {}).get("kind", ""),
             (r["error"] or {}).get("code") or "-",
             "yes" if (r["error"] or {}).get("retryable") else "no", r["attempts"],
             r["last_failed_at"] or "", (r["error"] or {}).get("message", "")[:60]]
            for r in records]
    print(render(["job", "music task", "kind", "code", "retry helps", "attempts",
                  "last failed", "message"], rows))
    print(f"{len(records)} shown of {total}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Queue failed jobs again (``args.job_ids``, or those of ``args.kind`` /
    ``args.code`` / ``args.all_retryable``); exit 1 if any could not be retried."""
    if args.job_ids:
        outcomes = retry_jobs(list(args.job_ids))
    elif args.kind or args.code or args.all_retryable:
        # Naming a kind or code is a person's explicit choice (say, every `unauthorized`
        # failure after fixing the key), so it retries them whether or not retryable.
        outcomes = retry_where(args.kind, args.code, retryable_only=args.all_retryable)
    else:
        print("covers retry: name JOB_IDs, or --kind, --code or --all-retryable",
              file=sys.stderr)
        return EXIT_USAGE
    for outcome in outcomes:
        print(f"{outcome.job_id}  {outcome.result}")
    retried = sum(o.result == "ok" for o in outcomes)
    print(f"{retried} queued again")
    return EXIT_OK if retried == len(outcomes) else EXIT_FAILED


def cmd_forget(args: argparse.Namespace) -> int:
    """Remove the failure records of ``args.job_ids``; exit 1 unless all were removed."""
    removed = forget_jobs(list(args.job_ids))
    print(f"{removed} forgotten")
    return EXIT_OK if removed == len(args.job_ids) else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    """Run everything on a private Redis and the stand-in: ``args.count`` covers
    (default 5), waiting at most ``args.timeout`` seconds (default 120)."""
    return run_demo(args.count, args.timeout)


#: Subcommands whose arguments go, unparsed, to the program they start (Celery, the
#: stand-in): their handlers read ``args.extra``.
PASSTHROUGH: dict[str, Handler] = {
    "worker": cmd_worker, "beat": cmd_beat, "standin": cmd_standin,
}
#: Every other subcommand's handler, given the parsed arguments.
COMMANDS: dict[str, Handler] = {
    "web": cmd_web, "metrics": cmd_metrics, "enqueue": cmd_enqueue, "status": cmd_status,
    "failures": cmd_failures, "retry": cmd_retry, "forget": cmd_forget, "demo": cmd_demo,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``covers``."""
    parser = argparse.ArgumentParser(prog="covers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="start a Celery worker (extra options go to celery)",
                   add_help=False)
    sub.add_parser("beat", help="start the beat scheduler", add_help=False)
    web = sub.add_parser("web", help="serve the callback endpoint")
    web.add_argument("--host", default="127.0.0.1")
    # A string default goes through `type` too: a bad $PORT is an error of `web` only.
    web.add_argument("--port", type=port_number, default=os.environ.get("PORT") or "8000")
    web.add_argument("--threads", type=positive_count, default=8)
    sub.add_parser("standin", help="run the Kie stand-in", add_help=False)
    metrics = sub.add_parser("metrics", help="serve the Prometheus endpoint")
    metrics.add_argument("--host", default="127.0.0.1")
    metrics.add_argument("--port", type=port_number, default=None,
                         help="default: COVERS_METRICS_PORT")
    enqueue = sub.add_parser("enqueue", help="queue a cover job")
    # Parsed into music_task_id; shown as task_id, as the help has always shown it.
    enqueue.add_argument("music_task_id", nargs="?", metavar="task_id",
                         help="the music task id")
    enqueue.add_argument("callback_url", nargs="?",
                         help="absolute http(s) URL for the app's callback")
    enqueue.add_argument("--wait", action="store_true", help="wait until the job ends")
    enqueue.add_argument("--timeout", type=positive_seconds, default=600.0,
                         help="seconds to wait (default 600)")
    enqueue.add_argument("--json", action="store_true")
    add_enqueue_from_arguments(enqueue)
    status = sub.add_parser("status", help="show jobs")
    status.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    status.add_argument("--json", action="store_true")
    failures = sub.add_parser("failures", help="list failed jobs, newest first")
    failures.add_argument("--kind", help="only this error kind, e.g. upstream")
    failures.add_argument("--code", help="only this API code, e.g. 500")
    failures.add_argument("--limit", type=positive_count, default=50,
                          help="most failures to list (default 50)")
    failures.add_argument("--json", action="store_true")
    retry = sub.add_parser("retry", help="queue failed jobs again (same job ids)")
    retry.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    retry.add_argument("--kind", help="every failure of this kind")
    retry.add_argument("--code", help="every failure with this API code")
    retry.add_argument("--all-retryable", action="store_true",
                       help="every failure a retry can help")
    forget = sub.add_parser("forget", help="remove failure records")
    forget.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    demo = sub.add_parser("demo", help="run everything locally on the stand-in")
    demo.add_argument("--count", type=positive_count, default=5,
                      help="covers to make (default 5)")
    demo.add_argument("--timeout", type=positive_seconds, default=120.0,
                      help="seconds to wait (default 120)")
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a ``covers`` command line (without the program name).

    A passthrough command (`PASSTHROUGH`) is not parsed: its options belong to the
    program it starts (``covers worker --help`` is Celery's help), so they are kept
    as they are in ``extra``.
    """
    if argv and argv[0] in PASSTHROUGH:
        return argparse.Namespace(command=argv[0], extra=list(argv[1:]))
    return build_parser().parse_args(argv)


def _needs_redis(args: argparse.Namespace) -> bool:
    """Whether the command talks to Redis (``covers worker --help`` does not)."""
    extra = getattr(args, "extra", None) or []
    return args.command in REDIS_COMMANDS and not {"-h", "--help"} & set(extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``covers``; returns the exit code (0 ok, 1 a job failed or did
    not finish, 2 bad input or settings or Redis out of reach, 130 interrupted).

    Commands in `REDIS_COMMANDS` first PING Redis once (`check_redis`, 2 s, no
    retries); Redis out of reach then, or later, is one line naming REDIS_URL's
    host:port (never its password) and exit 2.
    """
    url = ""
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        handler = PASSTHROUGH.get(args.command) or COMMANDS.get(args.command)
        if handler is None:
            return EXIT_USAGE
        if _needs_redis(args):
            url = redis_url()  # REDIS_URL, or the private server (started if needed)
            check_redis(url)
        return handler(args)
    except SettingsError as bad:
        print(f"covers: setting error: {bad}", file=sys.stderr)
        return EXIT_USAGE
    except REDIS_UNREACHABLE as outage:
        print(unreachable_message(url or _configured_redis_url(), outage), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _configured_redis_url() -> str:
    """REDIS_URL as configured (for a message), or "" when it is unset or unreadable."""
    try:
        return get_settings().redis_url or os.environ.get("REDIS_URL", "")
    except SettingsError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
