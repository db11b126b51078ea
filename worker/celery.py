"""The Celery app as worker and beat processes start it.

``celery -A kie_covers.worker worker`` (and ``covers worker``) loads this module:
it is the app of `kie_covers.runtime.app` plus what only a worker needs, the due
dispatcher (`kie_covers.worker.dispatcher`), warm clients in each pool child, the
consumer that quarantines poison messages and waits out a full Redis
(`kie_covers.worker.quarantine_consumer`; its Redis clients wait it out too,
`kie_covers.runtime.connections.pause_when_full`), the log filter that masks
secrets, a start-up refusal of an image store whose backend is missing, the
watch on COVERS_CALLBACK_URL's ``/healthz`` (`kie_covers.runtime.callback_health`),
and the liveness hooks: a heartbeat in each pool process, and each cover message the
main process reserves tied to it (`kie_covers.runtime.heartbeat`).
"""

from __future__ import annotations

import logging
import sys

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from kie_covers.config import get_settings
from kie_covers.core.errors import StoreUnusable
from kie_covers.runtime.app import app
from kie_covers.runtime.callback_health import start_callback_watch
from kie_covers.runtime.connections import get_limiters, get_store, pause_when_full
from kie_covers.runtime.heartbeat import current, get_liveness, start_heartbeat
from kie_covers.runtime.kie_client import get_client
from kie_covers.runtime.logs import install_filter
from kie_covers.runtime.messages import COVER_TASK
from kie_covers.services.image_store import check_store
from kie_covers.store.liveness import holder_id
from kie_covers.worker.dispatcher import DispatcherStep
from kie_covers.worker.task_events import TaskEventsMark

__all__ = ["app"]

app.steps["worker"].add(DispatcherStep)
app.steps["consumer"].add(TaskEventsMark)
# Celery's documented hook for the consumer class (a string: loaded by the worker only).
app.conf.worker_consumer = "kie_covers.worker.quarantine_consumer:QuarantiningConsumer"
# A worker waits out a full Redis on every command rather than failing the step at hand.
pause_when_full()


#: Exit code of a worker refused at start-up for a setting (as ``covers`` uses).
EXIT_SETTINGS = 2


@worker_init.connect(weak=False)
def _refuse_an_unusable_image_store(**_: object) -> None:
    """Stop before any task is taken when COVERS_IMAGE_STORE's backend is missing:
    otherwise every succeeded cover's copy would fail, one job at a time."""
    store = get_settings().image_store
    if not store:
        return
    try:
        check_store(store)
    except StoreUnusable as unusable:
        print(f"covers: setting error: {unusable}", file=sys.stderr, flush=True)
        # SystemExit passes through Celery's signal dispatch (it logs only Exception).
        raise SystemExit(EXIT_SETTINGS) from None


@worker_ready.connect(weak=False)
def _watch_callback_endpoint(**_: object) -> None:
    """Check, in the background, that COVERS_CALLBACK_URL reaches a `covers web`."""
    start_callback_watch(get_settings())


log = logging.getLogger("covers.liveness")


@worker_process_init.connect(weak=False)
def _warm_up_child(sender: object = None, **_: object) -> None:
    """Build this pool child's clients now, not inside its first task, and start its
    heartbeat: the runs it begins are tied to it."""
    get_store()
    get_limiters()
    get_client()
    # The prefork pool sends this signal with the worker's node name as its sender.
    start_heartbeat(get_liveness(), holder_id(str(sender or "worker"), "pool"),
                    get_settings().heartbeat_interval, check_runs=True)


@worker_process_shutdown.connect(weak=False)
def _child_leaves(**_: object) -> None:
    """A pool process that exits in order leaves the registry, giving back what it
    still holds (normally nothing: its runs have ended)."""
    beat = current()
    if beat is not None:
        beat.stop()


@task_received.connect(weak=False)
def _tie_reserved(request: object = None, **_: object) -> None:
    """Tie each cover message the main process reserves or prefetches to it, so if it
    dies the job is sent again once its heartbeat lapses."""
    beat = current()
    if beat is None or getattr(request, "name", None) != COVER_TASK:
        return
    job_id = getattr(request, "id", None)
    if not isinstance(job_id, str):
        return
    try:
        beat.tie(job_id)
    except Exception:  # never stop the consumer for it: COVERS_REDISPATCH_AFTER remains
        log.warning("could not tie job %s to this worker", job_id, exc_info=True)


@after_setup_logger.connect(weak=False)
@after_setup_task_logger.connect(weak=False)
def _mask_secrets(logger: logging.Logger, **_: object) -> None:
    install_filter(logger)
