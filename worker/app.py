"""The Celery application. Start workers with ``covers worker`` or ``celery -A worker worker``."""

from __future__ import annotations

from celery import Celery

from worker import kombu_guard

kombu_guard.install()

app = Celery("kie-covers", include=["tasks.cover", "tasks.failures", "tasks.notify",
                                      "tasks.images"])
# A string path: the settings (and a private Redis, if REDIS_URL is unset) are read
# when the app is first used, not when this module is imported.
app.config_from_object("worker.celeryconfig")


def _install_worker_steps() -> None:
    from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

    from worker.dispatcher import DispatcherStep
    from worker.logs import install_filter

    app.steps["worker"].add(DispatcherStep)

    @worker_process_init.connect(weak=False)
    def _warm_up_child(**_: object) -> None:
        # Build this pool child's clients now, not inside its first task.
        from tasks.kie_client import get_client
        from worker.connections import get_limiters, get_store

        get_store()
        get_limiters()
        get_client()

    @after_setup_logger.connect(weak=False)
    @after_setup_task_logger.connect(weak=False)
    def _mask_secrets(logger: object, **_: object) -> None:
        install_filter(logger)  # type: ignore[arg-type]


_install_worker_steps()
