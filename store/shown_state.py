"""What Celery's tools show of a job, on the Redis side: a wait's result-backend entry
and the flag that says some worker has task events on.

The values are Celery's (encoded by `kie_covers.runtime.task_view`); this module only
decides, atomically, whether they may be written.
"""

from __future__ import annotations

import redis

from kie_covers.config import keys
from kie_covers.core.states import JobState
from kie_covers.store.scripts import register


class ShownState:
    """Writes for `kie_covers.runtime.task_view` on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._show_wait = register(client, "show_wait")

    def show_wait(self, job_id: str, result_key: str, value: str, ttl_s: int) -> bool:
        """Set `result_key` to `value` for `ttl_s` seconds unless job `job_id` has ended
        (or has no record); True if written. One round trip."""
        return bool(self._show_wait(keys=[keys.job(job_id), result_key],
                                    args=[value, max(1, int(ttl_s))]))

    def has_ended(self, job_id: str) -> bool:
        """True if job `job_id`'s record is succeeded or failed."""
        state = self._client.hget(keys.job(job_id), "state")
        if isinstance(state, bytes):
            state = state.decode()
        return state in (JobState.SUCCEEDED.value, JobState.FAILED.value)

    def mark_task_events(self, node: str, ttl_s: float) -> None:
        """Say for `ttl_s` seconds that worker `node` has task events on."""
        self._client.set(keys.TASK_EVENTS, node, px=max(1, int(ttl_s * 1000)))

    def task_events_marked(self) -> bool:
        """True while some worker's mark (`mark_task_events`) lives."""
        return bool(self._client.exists(keys.TASK_EVENTS))
