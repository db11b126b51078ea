"""One settings object, read once from the environment.

Every setting, its default and its unit lives in `SETTINGS` below (the README's
settings table says the same, and a test holds the two together). A missing or
malformed value is a
`SettingsError` naming the variable, raised when the settings are first read
(at start-up), never at the first job.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kie_covers.core.errors import SettingsError
from kie_covers.core.secret import Secret


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _secret(name: str, raw: str) -> Secret:
    value = raw.strip()
    if any(ch.isspace() for ch in value):
        raise SettingsError(f"{name} must not contain whitespace")
    return Secret(value)


#: Shortest lifetime, in seconds, of a kept job record or failure (COVERS_RESULT_TTL,
#: COVERS_FAILURE_TTL): shorter, and a record could expire while the app still polls it
#: or before the notice and image copies that read it have run.
MIN_TTL_S = 60.0
#: Highest TCP port number.
MAX_PORT = 65535


def _positive_float(name: str, raw: str) -> float:
    """A finite number greater than 0 (seconds, unless the setting says otherwise)."""
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    # `not value > 0` also catches nan (every comparison with nan is false).
    if not value > 0 or not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number greater than 0, got {raw!r}")
    return value


def _ttl(name: str, raw: str) -> float:
    """Seconds a record is kept: finite and at least `MIN_TTL_S` (60)."""
    value = _positive_float(name, raw)
    if value < MIN_TTL_S:
        raise SettingsError(
            f"{name} must be at least {MIN_TTL_S:g} seconds, got {raw!r}")
    return value


def _positive_int(name: str, raw: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {raw!r}")
    return value


def _port(name: str, raw: str) -> int:
    """A TCP port number, 1 to `MAX_PORT` (65535); never wrapped modulo 65536."""
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(
            f"{name} must be a port number from 1 to {MAX_PORT}, got {raw!r}") from None
    if not 1 <= value <= MAX_PORT:
        raise SettingsError(f"{name} must be a port number from 1 to {MAX_PORT}, got {raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1 or 0 (true or false), got {raw!r}")


def _http_url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name} must be an absolute http(s) URL, got {raw!r}")
    return value


def _redis_url(name: str, raw: str) -> str:
    value = raw.strip()
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(f"{name} must be a redis://, rediss:// or unix:// URL")
    return value


def _broker_url(name: str, raw: str) -> str:
    value = raw.strip()
    if urlsplit(value).scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
        raise SettingsError(f"{name} must be a redis://, rediss:// or amqp:// URL")
    return value


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*s\s*$")


def parse_rate(name: str, raw: str) -> tuple[int, float]:
    """Parse ``'<count>/<seconds>s'`` (e.g. ``'20/10s'``) into (count, seconds)."""
    match = _RATE.match(raw)
    if (not match or int(match.group(1)) < 1 or float(match.group(2)) <= 0
            or not math.isfinite(float(match.group(2)))):
        raise SettingsError(f"{name} must look like '20/10s' (count/seconds), got {raw!r}")
    return int(match.group(1)), float(match.group(2))


def _share(name: str, raw: str) -> float:
    """A share strictly between 0 and 1 (0 or 1 would let one side starve)."""
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number between 0 and 1, got {raw!r}") from None
    if not 0 < value < 1:  # also refuses nan
        raise SettingsError(
            f"{name} must be a finite number greater than 0 and less than 1, got {raw!r}")
    return value


def _choice(*options: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise SettingsError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


@dataclass(frozen=True)
class Spec:
    """One environment variable: its attribute, default (None = unset), parser and meaning."""

    env: str
    attr: str
    default: str | None
    parse: Callable[[str, str], Any]
    doc: str


SETTINGS: tuple[Spec, ...] = (
    Spec("REDIS_URL", "redis_url", None, _redis_url,
         "Redis for the broker, results, job records and locks. Unset: a private "
         "redis-server is started under COVERS_STATE_DIR (demo and development only)."),
    Spec("COVERS_BROKER_URL", "broker_url", None, _broker_url,
         "Broker, when it is not REDIS_URL (e.g. amqp://guest:guest@127.0.0.1:5672//)."),
    Spec("KIE_API_KEY", "kie_api_key", None, _secret,
         "Bearer key for the Kie API. Required by workers; never logged."),
    Spec("KIE_BASE_URL", "kie_base_url", "https://api.kie.ai", _http_url,
         "Base URL of the Kie API (or a provider serving the same API)."),
    Spec("KIE_CODE_TABLE", "kie_code_table", "kie", _choice("kie", "sunoapi"),
         "Which provider's answer codes to use: kie, or sunoapi (429 = credits, 430 = rate)."),
    Spec("KIE_WEBHOOK_HMAC_KEY", "kie_webhook_hmac_key", None, _secret,
         "When set, callbacks must carry a valid X-Webhook-Signature; never logged."),
    Spec("KIE_WEBHOOK_MAX_AGE", "kie_webhook_max_age", "300", _positive_float,
         "Seconds a signed callback's X-Webhook-Timestamp may be old (or ahead) "
         "before it is refused."),
    Spec("KIE_RATE_LIMIT", "rate_limit", "20/10s", parse_rate,
         "New generations allowed per window for the whole cluster, as <count>/<seconds>s. "
         "Shared by every worker on every host using the same Redis."),
    Spec("KIE_STATUS_RATE_LIMIT", "status_rate_limit", "100/10s", parse_rate,
         "Status polls and credit checks allowed per window for the whole cluster."),
    Spec("COVERS_RATE_MARGIN", "rate_margin", "0.1", _positive_float,
         "Seconds added to each rate window so network jitter never lets Kie count one "
         "call too many."),
    Spec("COVERS_BULK_MIN_SHARE", "bulk_min_share", "0.2", _share,
         "Share of generate slots the bulk lane gets while interactive jobs also wait "
         "(greater than 0, less than 1), so neither lane starves."),
    Spec("KIE_POLL_INTERVAL", "kie_poll_interval", "30", _positive_float,
         "Seconds between record-info polls of a submitted cover."),
    Spec("KIE_POLL_TIMEOUT", "kie_poll_timeout", "900", _positive_float,
         "Seconds after submission before an unfinished cover fails as timed out (retryable)."),
    Spec("KIE_HTTP_TIMEOUT", "kie_http_timeout", "20", _positive_float,
         "Seconds to wait for Kie on each HTTP call (connect and read)."),
    Spec("COVERS_CALLBACK_URL", "callback_url", None, _http_url,
         "Public URL of this project's callback endpoint (`covers web`, path /kie/callback). "
         "When set it is the callBackUrl handed to Kie; unset, the job's own callBackUrl is."),
    Spec("COVERS_MAX_ATTEMPTS", "max_attempts", "5", _positive_int,
         "Upstream faults (5xx, network, malformed answers) a job survives before it fails."),
    Spec("COVERS_BACKOFF_BASE", "backoff_base", "2", _positive_float,
         "Seconds: first retry waits up to this (full jitter), doubling each attempt."),
    Spec("COVERS_BACKOFF_MAX", "backoff_max", "300", _positive_float,
         "Seconds: the longest single backoff wait."),
    Spec("COVERS_MAINTENANCE_PAUSE", "maintenance_pause", "60", _positive_float,
         "Seconds to wait after a 455 (maintenance) when Kie gives no Retry-After; also "
         "how often a job held for credits (402/433) checks them again."),
    Spec("COVERS_CREDITS_MAX_WAIT", "credits_max_wait", "3600", _positive_float,
         "Seconds a job waits for credits (402/433) before it fails as retryable."),
    Spec("COVERS_REDISPATCH_AFTER", "redispatch_after", "600", _positive_float,
         "Seconds a job may go untouched by any worker before its message is sent again: "
         "the last resort behind the heartbeats (COVERS_DEAD_AFTER), for a message lost "
         "where no heartbeat covers it. Must exceed 3 x KIE_HTTP_TIMEOUT."),
    Spec("COVERS_DISPATCH_INTERVAL", "dispatch_interval", "1", _positive_float,
         "Seconds between checks for jobs whose wait is over (each worker checks)."),
    Spec("COVERS_HEARTBEAT_INTERVAL", "heartbeat_interval", "1", _positive_float,
         "Seconds between heartbeats of each worker process (a thread writes them to "
         "Redis, also during a slow call to Kie)."),
    Spec("COVERS_DEAD_AFTER", "dead_after", "5", _positive_float,
         "Seconds without a heartbeat after which a worker process counts as dead and any "
         "live worker sends the jobs it held again. Must be at least 3 x "
         "COVERS_HEARTBEAT_INTERVAL."),
    Spec("COVERS_RESULT_TTL", "result_ttl", "604800", _ttl,
         "Seconds a succeeded job's record and result are kept (default 7 days)."),
    Spec("COVERS_FAILURE_TTL", "failure_ttl", "2592000", _ttl,
         "Seconds a failed job's record and result are kept (default 30 days)."),
    Spec("COVERS_RETRY_INTERVAL", "retry_interval", "60", _positive_float,
         "Seconds between the beat's rounds of scheduled retries of failed covers."),
    Spec("COVERS_RETRY_BASE", "retry_base", "300", _positive_float,
         "Seconds from a retryable failure to its first scheduled retry; doubles each round."),
    Spec("COVERS_RETRY_MAX_DELAY", "retry_max_delay", "21600", _positive_float,
         "Seconds: the longest wait between two scheduled retries of one job (6 hours)."),
    Spec("COVERS_RETRY_MAX_AGE", "retry_max_age", "86400", _positive_float,
         "Seconds after its first failure when a job is no longer retried on schedule."),
    Spec("COVERS_APP_WEBHOOK_KEY", "app_webhook_key", None, _secret,
         "Secret to sign outcome notices to the app's callBackUrl (as Kie signs); never logged."),
    Spec("COVERS_NOTIFY_MAX_AGE", "notify_max_age", "3600", _positive_float,
         "Seconds to keep retrying an outcome notice while the app is down, then give up."),
    Spec("COVERS_NOTIFY_TIMEOUT", "notify_timeout", "10", _positive_float,
         "Seconds one outcome notice POST may take in all (connect, send, the whole "
         "answer); the notice lock is 3 x this."),
    Spec("COVERS_IMAGE_STORE", "image_store", None, _text,
         "Where to keep copies of each succeeded cover's images (Kie deletes them after 14 "
         "days): a local directory, or an fsspec URL such as s3://bucket/covers. Unset: off."),
    Spec("COVERS_IMAGE_MAX_BYTES", "image_max_bytes", "20000000", _positive_int,
         "Largest image copied to the image store, in bytes."),
    Spec("COVERS_METRICS_PORT", "metrics_port", None, _port,
         "Port for the Prometheus endpoint (`covers metrics`, path /metrics); its --port "
         "wins. Only the exporter reads it: every process counts into Redis regardless."),
    Spec("COVERS_LOG_FORMAT", "log_format", "text", _choice("text", "json"),
         "Log lines as readable text, or one JSON object per line."),
    Spec("COVERS_MAX_CALLBACK_BYTES", "max_callback_bytes", "65536", _positive_int,
         "Largest callback body the web endpoint accepts, in bytes."),
    Spec("COVERS_CALLBACK_SECRET", "callback_secret", None, _secret,
         "Secret that makes each job's callback URL unguessable (a per-job token). Unset: "
         "one is made once and kept in Redis, shared by every process on it; never logged."),
    Spec("COVERS_CALLBACK_SECRET_PREVIOUS", "callback_secret_previous", None, _secret,
         "The secret before the last rotation; its tokens stay valid (set it for "
         "KIE_POLL_TIMEOUT after rotating); never logged."),
    Spec("COVERS_EARLY_CALLBACK_BYTES", "early_callback_bytes", "1000000", _positive_int,
         "Most bytes of callbacks kept in all for cover ids no job owns yet (they may come "
         "before the submit is recorded); more are refused."),
    Spec("COVERS_MAX_JSON_DEPTH", "max_json_depth", "20", _positive_int,
         "Deepest nesting of JSON the web endpoint reads; deeper bodies get 400."),
    Spec("COVERS_WEB_CONNECTION_LIMIT", "web_connection_limit", "100", _positive_int,
         "Most connections `covers web` holds open at once."),
    Spec("COVERS_WEB_PORT", "web_port", "8000", _port,
         "Port `covers web` listens on (its --port wins). $PORT is not read: Procfile "
         "runners set it per process, so COVERS_CALLBACK_URL must name this port."),
    Spec("COVERS_WEB_CHANNEL_TIMEOUT", "web_channel_timeout", "30", _positive_float,
         "Seconds `covers web` waits on an idle or slow connection before closing it."),
    Spec("COVERS_API_TOKEN", "api_token", None, _secret,
         "Bearer token the producer API (`covers web`, paths /v1/...) requires. Unset: the "
         "API answers only clients on loopback that no proxy forwarded; never logged."),
    Spec("COVERS_MAX_API_BYTES", "max_api_bytes", "1048576", _positive_int,
         "Largest request body the producer API accepts, in bytes (a batch included)."),
    Spec("COVERS_API_MAX_BATCH", "api_max_batch", "1000", _positive_int,
         "Most items one POST /v1/covers/batch may hold; more are refused (422)."),
    Spec("COVERS_CONSOLE_TOKEN", "console_token", None, _secret,
         "Token the operations console (`covers web`, /console) asks for at its login "
         "form. Unset: the console answers only clients on loopback that no proxy "
         "forwarded; never logged nor shown."),
    Spec("COVERS_ALLOW_PRIVATE_TARGETS", "allow_private_targets", "0", _flag,
         "1 lets image downloads and app notices go to loopback and private addresses "
         "(development, the demo and the tests only). 0 (production): only public ones."),
    Spec("COVERS_QUEUE", "queue", "covers", _text,
         "Celery queue the cover tasks use."),
    Spec("COVERS_STATE_DIR", "state_dir", ".covers", _text,
         "Directory for the private Redis server's files (redis/, when REDIS_URL is "
         "unset), beat's schedule and the demo's log (demo.log)."),
    Spec("COVERS_LOG_LEVEL", "log_level", "INFO",
         _choice("debug", "info", "warning", "error"),
         "Log level of workers and the web endpoint."),
)


@dataclass(frozen=True)
class Settings:
    """Typed settings; see `SETTINGS` for each field's variable, default and unit."""

    redis_url: str | None
    broker_url: str | None
    kie_api_key: Secret | None
    kie_base_url: str
    kie_code_table: str
    kie_webhook_hmac_key: Secret | None
    kie_webhook_max_age: float
    rate_limit: tuple[int, float]
    status_rate_limit: tuple[int, float]
    rate_margin: float
    bulk_min_share: float
    kie_poll_interval: float
    kie_poll_timeout: float
    kie_http_timeout: float
    callback_url: str | None
    max_attempts: int
    backoff_base: float
    backoff_max: float
    maintenance_pause: float
    credits_max_wait: float
    redispatch_after: float
    dispatch_interval: float
    heartbeat_interval: float
    dead_after: float
    result_ttl: float
    failure_ttl: float
    retry_interval: float
    retry_base: float
    retry_max_delay: float
    retry_max_age: float
    app_webhook_key: Secret | None
    notify_max_age: float
    notify_timeout: float
    image_store: str | None
    image_max_bytes: int
    metrics_port: int | None
    log_format: str
    max_callback_bytes: int
    callback_secret: Secret | None
    callback_secret_previous: Secret | None
    early_callback_bytes: int
    max_json_depth: int
    web_connection_limit: int
    web_port: int
    web_channel_timeout: float
    api_token: Secret | None
    max_api_bytes: int
    api_max_batch: int
    console_token: Secret | None
    allow_private_targets: bool
    queue: str
    state_dir: str
    log_level: str

    def require_api_key(self) -> Secret:
        """The API key, or a `SettingsError` naming KIE_API_KEY when it is unset."""
        if self.kie_api_key is None:
            raise SettingsError(
                "KIE_API_KEY is not set: workers need the Kie API key "
                "(or run `covers demo`, which uses the built-in stand-in)"
            )
        return self.kie_api_key

    @property
    def notice_lock(self) -> float:
        """Seconds one process may hold a notice to deliver it: 3 x
        COVERS_NOTIFY_TIMEOUT."""
        return 3 * self.notify_timeout

    @property
    def notice_lease(self) -> float:
        """Seconds from a job's end until its app notice is sent from the due set, if
        the process that ended the job has not delivered it by then:
        `notice_lock` + 5. 0 when the app is not sent notices (no
        COVERS_CALLBACK_URL)."""
        return self.notice_lock + 5 if self.callback_url else 0.0


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting from `environ` (default: `os.environ`)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in SETTINGS:
        raw = env.get(spec.env)
        if raw is None or raw.strip() == "":
            # Set but empty means unset: what `KEY=` in a .env file or Procfile says.
            raw = spec.default
        values[spec.attr] = None if raw is None else spec.parse(spec.env, raw)
    settings = Settings(**values)
    if settings.redispatch_after <= 3 * settings.kie_http_timeout:
        raise SettingsError(
            "COVERS_REDISPATCH_AFTER must exceed 3 x KIE_HTTP_TIMEOUT, or a slow but live "
            "job would be sent to a second worker"
        )
    if settings.dead_after < 3 * settings.heartbeat_interval:
        raise SettingsError(
            "COVERS_DEAD_AFTER must be at least 3 x COVERS_HEARTBEAT_INTERVAL, or one late "
            "heartbeat would make a live worker look dead"
        )
    return settings


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first call."""
    return load_settings()
