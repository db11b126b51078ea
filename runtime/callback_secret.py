"""The secret behind the callback URLs' per-job tokens, shared by every process.

The callBackUrl handed to Kie carries ``job=<job id>&token=<token>``
(`kie_covers.core.signing.callback_token`); the web endpoint refuses a callback
whose token is not its job's. Signing (workers) and checking (``covers web``)
must use the same secret:

- ``COVERS_CALLBACK_SECRET`` when set (with ``COVERS_CALLBACK_SECRET_PREVIOUS``
  also accepted, during a rotation);
- otherwise one random secret made once and kept in Redis under
  `kie_covers.config.keys.CALLBACK_SECRET` (``SET NX``: the first process to ask
  makes it, every other process on that Redis reads the same one).

Each process reads the Redis secret once (`callback_secrets`, per process) and
then re-checks it only where a stale copy would break callbacks: before signing
a URL (one pipelined round trip per generate, a paid call anyway) and when a
token does not verify. Each re-check writes the copy back with ``SET NX``, so a
Redis that lost its data (restart without persistence, a flush) gets the secret
the running processes already use instead of a new one. The secret itself never
leaves this module except into an HMAC: it is held as a `Secret` and never
logged, recorded or put in an exception.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable

import redis
from redis.commands.core import Script

from kie_covers.config import Settings, get_settings, keys
from kie_covers.core.secret import Secret
from kie_covers.core.signing import callback_token, callback_token_matches, job_callback_url
from kie_covers.runtime.connections import get_redis
from kie_covers.runtime.process import per_process

#: Bytes of randomness in a secret made for Redis (256 bits).
SECRET_BYTES = 32
#: Write the secret (ARGV[1]) unless one is kept; answer the one kept.
SYNC_SCRIPT = ("redis.call('SET', KEYS[1], ARGV[1], 'NX') "
               "return redis.call('GET', KEYS[1])")
#: Older Redis secrets a process still accepts after it has seen the key change
#: (a flush or data loss made another process write a new one).
KEEP_SEEN = 2


class CallbackSecrets:
    """Signs and checks the per-job callback tokens of this process.

    Args:
        settings: COVERS_CALLBACK_SECRET and COVERS_CALLBACK_SECRET_PREVIOUS.
        client: the Redis client holding the shared secret (called only when
            COVERS_CALLBACK_SECRET is unset).
    """

    def __init__(self, settings: Settings, client: Callable[[], redis.Redis]) -> None:
        self._configured = settings.callback_secret
        self._previous = settings.callback_secret_previous
        self._client = client
        self._lock = threading.Lock()
        #: Redis secrets seen by this process, newest first (empty when configured).
        self._seen: list[Secret] = []
        self._script: Script | None = None
        if self._configured is None:
            self._sync()

    @property
    def shared(self) -> bool:
        """True when the secret is the one kept in Redis (COVERS_CALLBACK_SECRET unset)."""
        return self._configured is None

    def token(self, job_id: str) -> str:
        """`job_id`'s token under the current secret (re-checked in Redis first when
        the secret is the shared one)."""
        current = self._configured if self._configured is not None else self._sync()
        return callback_token(current, job_id)

    def url(self, base_url: str, job_id: str) -> str:
        """`base_url` (COVERS_CALLBACK_URL) with `job_id` and its token in the query."""
        return job_callback_url(base_url, job_id, self.token(job_id))

    def matches(self, job_id: str, token: str) -> bool:
        """True if `token` is `job_id`'s under an accepted secret: the current one, the
        previous one (COVERS_CALLBACK_SECRET_PREVIOUS) or, for the shared secret, one
        this process saw in Redis before it changed. Constant time per secret."""
        if callback_token_matches(self._accepted(), job_id, token):
            return True
        if not self.shared:
            return False
        before = self._seen[0] if self._seen else None
        # Another process may have written a new shared secret (this Redis lost the
        # old one); one read tells.
        if self._sync() == before:
            return False
        return callback_token_matches(self._accepted(), job_id, token)

    def _accepted(self) -> list[Secret]:
        with self._lock:
            found = [self._configured] if self._configured is not None else list(self._seen)
        if self._previous is not None:
            found.append(self._previous)
        return found

    def _sync(self) -> Secret:
        """The shared secret now in Redis, written first if missing (ours, or a new
        random one). One round trip."""
        with self._lock:
            mine = self._seen[0].reveal() if self._seen else secrets.token_urlsafe(SECRET_BYTES)
        # A script, not a pipeline: redis-py writes a failed pipeline command's
        # arguments (here the secret) into the exception's text.
        if self._script is None:  # registered once: later calls send its SHA, not its text
            self._script = self._client().register_script(SYNC_SCRIPT)
        value = self._script(keys=[keys.CALLBACK_SECRET], args=[mine])
        current = Secret(str(value) if value else mine)
        with self._lock:
            if not self._seen or self._seen[0] != current:
                self._seen = [current, *self._seen][:KEEP_SEEN + 1]
            return self._seen[0]


@per_process
def callback_secrets() -> CallbackSecrets:
    """This process's `CallbackSecrets` (reads the shared secret from Redis once, when
    COVERS_CALLBACK_SECRET is unset)."""
    return CallbackSecrets(get_settings(), get_redis)


def callback_url_for(settings: Settings, job_id: str) -> str | None:
    """The callBackUrl to hand Kie for `job_id`: COVERS_CALLBACK_URL with the job id and
    its token, or None when COVERS_CALLBACK_URL is unset."""
    if not settings.callback_url:
        return None
    return callback_secrets().url(settings.callback_url, job_id)
