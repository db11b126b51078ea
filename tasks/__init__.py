"""Cover tasks and the producer API.

`enqueue_cover`, `get_cover` and `wait_for_cover` are imported lazily so that
importing a submodule (e.g. `tasks.errors`) never loads Celery.
"""

from __future__ import annotations

from typing import Any

__all__ = ["enqueue_cover", "get_cover", "wait_for_cover"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tasks import producer

        return getattr(producer, name)
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
