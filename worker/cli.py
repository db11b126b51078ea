"""The ``covers`` command.

    covers worker [CELERY WORKER OPTIONS]   start a worker (same as celery -A worker worker)
    covers beat                             start the beat scheduler
    covers web [--host H] [--port P]        serve the callback endpoint, the producer API
                                            (/v1/...) and the console (/console) under waitress
                                            (port: --port, else COVERS_WEB_PORT; never $PORT)
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
    covers quarantine [--limit N] [--json] [--clear]   poison broker entries set aside
    covers demo [--count N] [--keep]        everything, on a private Redis and the stand-in
    covers redis status | stop              the private Redis under COVERS_STATE_DIR

Exit codes: 0 ok, 1 a job failed or did not finish, 2 bad input or settings.
"""

from __future__ import annotations

import argparse
import base64
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
from kie_covers.core.errors import InvalidPayload, StoreFull, StoreUnusable, UnknownJob
from kie_covers.core.failure_filter import FailureFilter, parse_failure_filter
from kie_covers.core.masking import Masker
from kie_covers.core.schemas import INTERACTIVE
from kie_covers.core.states import JobState
from kie_covers.runtime import logs
from kie_covers.runtime.connections import get_redis, redis_url
from kie_covers.runtime.redis_server import private_redis_status, stop_private_redis
from kie_covers.services.failures import (
    count_failures,
    forget_jobs,
    list_failures,
    retry_jobs,
    retry_where,
)
from kie_covers.services.image_store import check_store
from kie_covers.standin import main as standin_main
from kie_covers.store.quarantine import Quarantine
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
                            "web", "worker", "beat", "quarantine"})
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


#: What ``covers worker --help`` prints (it reads no setting and reaches no server).
WORKER_HELP = """usage: covers worker [CELERY WORKER OPTIONS]

Checks the settings (KIE_API_KEY is required; COVERS_IMAGE_STORE's backend must be
installed), then runs
  celery -A kie_covers.worker worker -Q $COVERS_QUEUE --loglevel $COVERS_LOG_LEVEL [OPTIONS]
e.g. covers worker --concurrency 4

Celery's worker options: celery -A kie_covers.worker worker --help"""
#: What ``covers beat --help`` prints.
BEAT_HELP = """usage: covers beat [CELERY BEAT OPTIONS]

Runs the beat scheduler of the scheduled retries of failed covers:
  celery -A kie_covers.worker beat --schedule $COVERS_STATE_DIR/celerybeat-schedule [OPTIONS]

Celery's beat options: celery -A kie_covers.worker beat --help"""


def _asks_help(args: argparse.Namespace) -> bool:
    """Whether a passthrough command's options ask for help (-h or --help)."""
    return bool({"-h", "--help"} & set(getattr(args, "extra", None) or []))


def check_image_store(store: str | None) -> None:
    """Refuse a COVERS_IMAGE_STORE whose backend is not installed (`check_store`), as
    a `SettingsError` naming the package to install."""
    if store:
        try:
            check_store(store)
        except StoreUnusable as unusable:
            raise SettingsError(str(unusable)) from None


def cmd_worker(args: argparse.Namespace) -> int:
    """Check the settings, then become a Celery worker on COVERS_QUEUE.

    ``args.extra``: the rest of the command line, passed to ``celery worker`` as is;
    with -h or --help, print `WORKER_HELP` instead (no setting read).
    """
    if _asks_help(args):
        print(WORKER_HELP)
        return EXIT_OK
    settings = get_settings()
    settings.require_api_key()
    check_image_store(settings.image_store)
    redis_url()  # starts the private Redis when REDIS_URL is unset, and exports it
    argv = _celery_argv("worker", "-Q", settings.queue, "--loglevel", settings.log_level,
                        *args.extra)
    os.execv(sys.executable, argv)
    return EXIT_OK  # pragma: no cover - execv does not return


def cmd_beat(args: argparse.Namespace) -> int:
    """Become the Celery beat scheduler (its schedule file lives in COVERS_STATE_DIR).

    ``args.extra``: the rest of the command line, passed to ``celery beat`` as is;
    with -h or --help, print `BEAT_HELP` instead (no setting read, no Redis started).
    """
    if _asks_help(args):
        print(BEAT_HELP)
        return EXIT_OK
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

    ``args.host`` (default 127.0.0.1), ``args.port`` (default COVERS_WEB_PORT, 8000;
    never $PORT, which Procfile runners set per process) and ``args.threads``
    (default 8).
    """
    settings = get_settings()
    port = args.port or settings.web_port
    logs.configure()
    print(f"callback endpoint on http://{args.host}:{port}/kie/callback", flush=True)
    web.warn_if_callback_url_misses(settings.callback_url, port)
    callback_app = web.make_app()
    # Limits on bodies, headers, connections and idle time (see waitress_options).
    waitress.serve(callback_app, host=args.host, port=port, threads=args.threads,
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
        print("covers metrics: give --port or set COVERS_METRICS_PORT",
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
    # The copies kept in COVERS_IMAGE_STORE: Kie's own links expire after 14 days.
    stored = [[r["job_id"], n, image.get("location", "")]
              for r in records for n, image in enumerate(r.get("stored_images") or [], 1)]
    if stored:
        print("\nstored images:\n" + render(["job", "image", "location"], stored))


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
    except StoreFull as full:
        print(f"covers: {full}", file=sys.stderr)
        return EXIT_FAILED
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


def _failure_filter(args: argparse.Namespace, command: str) -> FailureFilter | None:
    """``--kind`` and ``--code`` checked by the web's rules; None (each fault said on
    stderr) if one is bad."""
    query = {name: value for name in ("kind", "code")
             if (value := getattr(args, name)) is not None}
    which, errors = parse_failure_filter(query)
    for error in errors:
        print(f"covers {command}: --{error.field}: {error.message}", file=sys.stderr)
    return None if errors else which


def cmd_failures(args: argparse.Namespace) -> int:
    """List recorded failures, newest first: at most ``args.limit`` (default 50), of
    ``args.kind`` / ``args.code`` when given."""
    which = _failure_filter(args, "failures")
    if which is None:
        return EXIT_USAGE
    records = list_failures(which.kind, which.code, limit=args.limit)
    if args.json:
        print(json.dumps(records, indent=2))
        return EXIT_OK
    total = count_failures(which.kind, which.code)
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
        which = _failure_filter(args, "retry")
        if which is None:
            return EXIT_USAGE
        # Naming a kind or code is a person's explicit choice (say, every `unauthorized`
        # failure after fixing the key), so it retries them whether or not retryable.
        outcomes = retry_where(which.kind, which.code, retryable_only=args.all_retryable)
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


#: Characters of a quarantined entry shown in the table (the JSON has it whole).
PREVIEW_CHARS = 40


def _preview(entry: dict[str, Any]) -> str:
    """The start of a quarantined entry's raw bytes, printable, masked for secrets."""
    try:
        raw = base64.b64decode(entry.get("raw") or "")
    except ValueError:
        raw = str(entry.get("raw", "")).encode()
    # Mask before cutting, so a secret that runs past the cut is masked too.
    text = Masker(logs.secret_filter().secrets)(raw[:4096].decode("utf-8", "replace"))
    return "".join(c if c.isprintable() else "?" for c in text)[:PREVIEW_CHARS]


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List the poison broker entries set aside, newest first (at most ``args.limit``,
    default 50; ``args.json`` prints them whole), or with ``args.clear`` empty the list."""
    quarantine = Quarantine(get_redis())
    if args.clear:
        print(f"{quarantine.clear()} quarantined entries removed")
        return EXIT_OK
    entries = quarantine.list(args.limit)
    if args.json:
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    rows = [[e.get("at", ""), e.get("queue", ""), e.get("reason", ""), e.get("size", ""),
             _preview(e), str(e.get("detail", ""))[:60]] for e in entries]
    print(render(["at", "queue", "reason", "bytes", "starts with", "detail"], rows))
    print(f"{len(entries)} shown of {quarantine.count()}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run everything on a private Redis and the stand-in: ``args.count`` covers
    (default 5), waiting at most ``args.timeout`` seconds (default 120); with
    ``args.keep``, the private Redis it started keeps running."""
    return run_demo(args.count, args.timeout, keep=args.keep)


def cmd_redis(args: argparse.Namespace) -> int:
    """``status`` or ``stop`` (``args.action``) the private Redis under
    COVERS_STATE_DIR: never REDIS_URL's server, never a process it did not start.

    status exits 0 when it runs, 1 when not; stop exits 0 (stopped, or nothing ran).
    """
    settings = get_settings()
    if args.action == "stop":
        stopped = stop_private_redis(settings.state_dir)
        if stopped is None:
            where = private_redis_status(settings.state_dir).directory
            print(f"no private Redis running under {where}")
        else:
            print(f"stopped the private Redis (pid {stopped.pid}, port {stopped.port}) "
                  f"under {stopped.directory}")
        return EXIT_OK
    status = private_redis_status(settings.state_dir)
    rows = [["state", "running" if status.running else "not running"],
            ["directory", str(status.directory)]]
    if status.running:
        rows += [["url", status.url], ["pid", str(status.pid)],
                 ["binary", status.executable]]
    if settings.redis_url:
        rows.append(["note", "REDIS_URL is set: commands use that server, not this one"])
    for name, value in rows:
        print(f"{name + ':':<11}{value}")
    return EXIT_OK if status.running else EXIT_FAILED


#: Subcommands whose arguments go, unparsed, to the program they start (Celery, the
#: stand-in): their handlers read ``args.extra``.
PASSTHROUGH: dict[str, Handler] = {
    "worker": cmd_worker, "beat": cmd_beat, "standin": cmd_standin,
}
#: Every other subcommand's handler, given the parsed arguments.
COMMANDS: dict[str, Handler] = {
    "web": cmd_web, "metrics": cmd_metrics, "enqueue": cmd_enqueue, "status": cmd_status,
    "failures": cmd_failures, "retry": cmd_retry, "forget": cmd_forget, "demo": cmd_demo,
    "redis": cmd_redis, "quarantine": cmd_quarantine,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``covers``."""
    parser = argparse.ArgumentParser(prog="covers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="start a Celery worker (extra options go to celery)",
                   add_help=False)
    sub.add_parser("beat", help="start the beat scheduler", add_help=False)
    web = sub.add_parser("web", help="serve the callback endpoint, the producer API and the "
                         "console")
    web.add_argument("--host", default="127.0.0.1")
    # Not $PORT: honcho and foreman set it per process (5000 + 100 x line), and the
    # callback URL handed to Kie must name the port this listens on.
    web.add_argument("--port", type=port_number, default=None,
                     help="default: COVERS_WEB_PORT (8000)")
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
    quarantine = sub.add_parser(
        "quarantine", help="list broker entries no worker could decode, newest first")
    quarantine.add_argument("--limit", type=positive_count, default=50,
                            help="most entries to list (default 50)")
    quarantine.add_argument("--json", action="store_true",
                            help="print the entries whole (raw bytes in base64)")
    quarantine.add_argument("--clear", action="store_true", help="empty the quarantine")
    demo = sub.add_parser("demo", help="run everything locally on the stand-in")
    demo.add_argument("--count", type=positive_count, default=5,
                      help="covers to make (default 5)")
    demo.add_argument("--timeout", type=positive_seconds, default=120.0,
                      help="seconds to wait (default 120)")
    demo.add_argument("--keep", action="store_true",
                      help="leave the private Redis it started running, with the jobs")
    private = sub.add_parser(
        "redis", help="the private Redis under COVERS_STATE_DIR (never REDIS_URL's)")
    private.add_argument("action", choices=("status", "stop"),
                         help="status: where it lives, its pid and port; stop: stop it")
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a ``covers`` command line (without the program name).

    A passthrough command (`PASSTHROUGH`) is not parsed: its options belong to the
    program it starts, so they are kept as they are in ``extra`` (its handler answers
    -h/--help itself, reading no setting).
    """
    if argv and argv[0] in PASSTHROUGH:
        return argparse.Namespace(command=argv[0], extra=list(argv[1:]))
    return build_parser().parse_args(argv)


def _needs_redis(args: argparse.Namespace) -> bool:
    """Whether the command talks to Redis (``covers worker --help`` does not)."""
    return args.command in REDIS_COMMANDS and not _asks_help(args)


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
