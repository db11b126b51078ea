"""Short-lived locks held by one process for one job: a token, a TTL, a safe release."""

from __future__ import annotations

import secrets

import redis

from kie_covers.store.scripts import register


class TokenLock:
    """A lock at `key` that only its taker can release.

    Args:
        client: Redis.
        key: the lock's key (e.g. `kie_covers.config.keys.images_lock`).
        ttl_s: seconds the lock lives if never released.
    """

    def __init__(self, client: redis.Redis, key: str, ttl_s: float) -> None:
        self.redis = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = secrets.token_hex(8)
        self._unlock = register(client, "unlock")

    def take(self) -> bool:
        """True if this call took the lock (nobody held it)."""
        return bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        """Release the lock if this token still holds it."""
        self._unlock(keys=[self.key], args=[self.token])
