"""Masking at the source: secrets never leave in text that came from outside.

Kie's answers and callbacks are quoted in error messages, and from there in job
records, the failure store, Celery results and the app's notice. An answer that
echoes a request header would carry the API key along. `Masker` strips, before
anything is stored: the literal secrets it is given (the API key, the webhook
keys), and any ``Bearer <token>`` or ``Authorization: <value>`` whatever it holds.
The log filter (`kie_covers.runtime.logs`) stays as a last line of defence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: What a masked value becomes.
MASK = "***"
#: Secrets shorter than this are not masked as literals (they would mask ordinary
#: words); keys are far longer.
MIN_SECRET_LEN = 6

_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;}]+")
_AUTHORIZATION = re.compile(
    r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:basic|bearer|digest|token)\s+)?"
    r"[^\s\"',;}]+")


class Masker:
    """Strips secrets and credential-looking values from text (see the module docstring).

    Args:
        secrets: the literal values to mask (empty and short ones are ignored).
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN},
                               key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """`text` with every secret and credential value replaced by `MASK`."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{MASK}", text)
        return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


#: A masker that knows no literal secrets: credential patterns only.
PATTERNS_ONLY = Masker()
