"""The Celery app as worker and beat processes start it.

``celery -A kie_covers.worker worker`` (and ``covers worker``) loads this module:
it is the app of `kie_covers.runtime.app` plus what only a worker needs, the due
dispatcher (`kie_covers.worker.dispatcher`), warm clients in each pool child, and
the log filter that masks secrets.
"""

from __future__ import annotations

import logging

from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

from kie_covers.runtime.app import app
from kie_covers.runtime.connections import get_limiters, get_store
from kie_covers.runtime.kie_client import get_client
from kie_covers.runtime.logs import install_filter
from kie_covers.worker.dispatcher import DispatcherStep

__all__ = ["app"]

app.steps["worker"].add(DispatcherStep)


@worker_process_init.connect(weak=False)
def _warm_up_child(**_: object) -> None:
    """Build this pool child's clients now, not inside its first task."""
    get_store()
    get_limiters()
    get_client()


@after_setup_logger.connect(weak=False)
@after_setup_task_logger.connect(weak=False)
def _mask_secrets(logger: logging.Logger, **_: object) -> None:
    install_filter(logger)
