"""The newest credit check of any worker, for the cluster overview.

While generates are held for credits (402/433), one worker at a time checks the
account's credits (`kie_covers.services.step.gate`); each check's time and
answer are kept here (`keys.CREDITS_CHECKED`), last writer wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from kie_covers.config import keys


@dataclass(frozen=True)
class CreditCheck:
    """One credit check: when (unix seconds) and the credits it found."""

    at: float
    left: float


def record_check(client: redis.Redis, left: float, now: float | None = None) -> None:
    """Keep a credit check's answer, `left` credits, as the newest one."""
    moment = time.time() if now is None else now
    client.hset(keys.CREDITS_CHECKED, mapping={"at": int(moment * 1000), "left": repr(left)})


def parse_check(raw: dict[str, str]) -> CreditCheck | None:
    """The check stored in the hash's fields `raw` (HGETALL), or None if none was kept."""
    try:
        return CreditCheck(int(raw["at"]) / 1000.0, float(raw["left"]))
    except (KeyError, ValueError):
        return None
