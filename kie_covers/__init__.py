"""kie-covers: cover art for Suno songs from the Kie API, by Celery workers.

The producer API::

    from kie_covers import enqueue_cover, get_cover, wait_for_cover

Those names are loaded on first use, so importing a submodule (say
`kie_covers.core.errors`) never loads Celery.

The packages are layers; each imports only from the layers under it
(checked by import-linter, see ``pyproject.toml``)::

    worker    entry points: the CLI, the callback endpoint, the dispatcher, the demo
    tasks     the Celery-registered tasks, and nothing else
    services  what a job does: enqueue, one step, endings, notices, images, failures
    runtime   the Celery app (a leaf), connections, the Kie client, metrics, logs
    store     Redis: job records, the due sets, the limiter, the failure index
    config    settings and Redis key names
    core      pure: errors, schemas, answers, retry policy, signing, states
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kie_covers.services.producer import enqueue_cover, get_cover, wait_for_cover

__all__ = ["enqueue_cover", "get_cover", "wait_for_cover"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # On first use, not at import: `import kie_covers.core.errors` (which runs
        # this module first) must not load Celery and connect to Redis.
        from kie_covers.services import producer  # noqa: PLC0415

        return getattr(producer, name)
    raise AttributeError(f"module 'kie_covers' has no attribute {name!r}")
