"""Logging set-up shared by every process, with secrets masked.

`SecretFilter` replaces the API key and webhook key with ``***`` in every
record, as a last line of defence: no code path is meant to log them.
"""

from __future__ import annotations

import logging

from config import Settings, get_settings

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


def secret_filter(settings: Settings | None = None) -> SecretFilter:
    """A filter for the process's configured secrets."""
    settings = settings or get_settings()
    return SecretFilter([s.reveal() for s in (settings.kie_api_key,
                                              settings.kie_webhook_hmac_key) if s])


def install_filter(logger: logging.Logger | None = None) -> None:
    """Add the secret filter to every handler of `logger` (default: root)."""
    target = logger or logging.getLogger()
    flt = secret_filter()
    for handler in target.handlers:
        handler.addFilter(flt)


def configure(level: str | None = None) -> None:
    """Text logs to stderr at COVERS_LOG_LEVEL (or `level`), secrets masked."""
    logging.basicConfig(level=(level or get_settings().log_level).upper(), format=FORMAT)
    install_filter()
