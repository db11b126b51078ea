"""Logging set-up shared by every process, with secrets masked.

Readable text by default; one JSON object per line when ``COVERS_LOG_FORMAT=json``
(with ``job_id``, ``music_task_id`` and ``step`` on every line about a job step).
`SecretFilter` replaces the API key and webhook keys with ``***`` in every
record, as a last line of defence: no code path is meant to log them.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from kie_covers.config import Settings, get_settings

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class SecretFilter(logging.Filter):
    """Masks the configured secrets in a record's final message."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, None
        return True


#: Record attributes copied into JSON lines when a log call passes them in ``extra``.
JSON_FIELDS = ("job_id", "music_task_id", "step")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, job fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JSON_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def secret_filter(settings: Settings | None = None) -> SecretFilter:
    """A filter for the process's configured secrets."""
    settings = settings or get_settings()
    return SecretFilter([s.reveal() for s in (settings.kie_api_key,
                                              settings.kie_webhook_hmac_key,
                                              settings.app_webhook_key,
                                              settings.api_token,
                                              settings.console_token) if s])


def install_filter(logger: logging.Logger | None = None) -> None:
    """Add the secret filter (and the JSON format, if asked) to `logger`'s handlers."""
    target = logger or logging.getLogger()
    flt = secret_filter()
    as_json = get_settings().log_format == "json"
    for handler in target.handlers:
        handler.addFilter(flt)
        if as_json:
            handler.setFormatter(JsonFormatter())


def configure(level: str | None = None) -> None:
    """Logs to stderr at COVERS_LOG_LEVEL (or `level`), in COVERS_LOG_FORMAT, masked."""
    logging.basicConfig(level=(level or get_settings().log_level).upper(), format=FORMAT)
    install_filter()
