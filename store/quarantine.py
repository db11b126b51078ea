"""The quarantine: broker entries no worker could decode, kept for a person to look at.

A poison entry (not JSON, not a kombu envelope, a body that does not decode, a content
type the workers refuse) is taken off its queue and pushed here instead of stopping a
worker. Each entry is one JSON object in the list `keys.QUARANTINE`, newest first:

    {"at": "2026-11-26T17:00:00.000Z", "queue": "covers", "reason": "not_json",
     "detail": "Expecting value: line 1 column 1 (char 0)", "size": 8,
     "truncated": false, "raw": "bm90IGpzb24="}

``raw`` is the entry's bytes in base64 (at most `RAW_MAX_BYTES` of them; ``size`` is the
whole length and ``truncated`` says whether some were cut). The list keeps the newest
`QUARANTINE_MAX` entries.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from kie_covers.config import keys

#: Entries the quarantine keeps (older ones are trimmed away as new ones arrive).
QUARANTINE_MAX = 10_000
#: Bytes of an entry's raw content kept (the rest is cut; ``size`` keeps the length).
RAW_MAX_BYTES = 64 * 1024
#: Characters of an entry's ``detail`` kept.
DETAIL_MAX_CHARS = 300


@dataclass(frozen=True)
class PoisonEntry:
    """One quarantined broker entry.

    Attributes:
        raw: the entry's bytes as they were on the broker (or re-encoded, see the
            README), whole.
        reason: why it could not be used, a short word (``not_json``, ...).
        queue: the queue it was taken from ("" when unknown).
        detail: the decoder's message (no content of the entry).
        at_ms: when it was quarantined, unix ms.
    """

    raw: bytes
    reason: str
    queue: str
    detail: str
    at_ms: int

    def to_json(self) -> str:
        """The stored form (see the module docstring)."""
        kept = self.raw[:RAW_MAX_BYTES]
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.at_ms / 1000))
        return json.dumps({
            "at": f"{at}.{self.at_ms % 1000:03d}Z", "queue": self.queue, "reason": self.reason,
            "detail": self.detail[:DETAIL_MAX_CHARS], "size": len(self.raw),
            "truncated": len(kept) < len(self.raw),
            "raw": base64.b64encode(kept).decode("ascii"),
        })


class Quarantine:
    """The quarantine list on `client` (see the module docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, entry: PoisonEntry) -> None:
        """Push `entry` (newest first) and trim the list to `QUARANTINE_MAX`, atomically."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(keys.QUARANTINE, entry.to_json())
        pipe.ltrim(keys.QUARANTINE, 0, QUARANTINE_MAX - 1)
        pipe.execute()

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` entries (dicts as stored), newest first."""
        rows = self.redis.lrange(keys.QUARANTINE, 0, max(0, limit - 1))
        out: list[dict[str, Any]] = []
        for row in rows:
            try:
                out.append(json.loads(row))
            except ValueError:  # written by someone else: show it, do not fail
                text = row.decode(errors="replace") if isinstance(row, bytes) else str(row)
                out.append({"reason": "unreadable", "raw": text})
        return out

    def count(self) -> int:
        """Entries in the quarantine."""
        return int(self.redis.llen(keys.QUARANTINE))

    def clear(self) -> int:
        """Empty the quarantine; returns how many entries it held."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.llen(keys.QUARANTINE)
        pipe.delete(keys.QUARANTINE)
        held, _ = pipe.execute()
        return int(held)
