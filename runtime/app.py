"""The Celery application, as a leaf: it imports no task and no other layer's module.

Producers, the callback endpoint and the tasks all use this one `app`. Worker
processes start from `kie_covers.worker.celery`, which adds the dispatcher and
logging hooks; ``celery -A kie_covers.worker worker`` finds it there.
"""

from __future__ import annotations

from celery import Celery

from kie_covers.runtime import kombu_guard

kombu_guard.install()

#: Modules whose tasks a worker registers (as names: importing them is the worker's
#: business, at start-up, not this module's).
TASK_MODULES = ["kie_covers.tasks.cover", "kie_covers.tasks.failures",
                "kie_covers.tasks.notify", "kie_covers.tasks.images"]

app = Celery("kie-covers", include=TASK_MODULES)
# A string path: the settings (and a private Redis, if REDIS_URL is unset) are read
# when the app is first used, not when this module is imported.
app.config_from_object("kie_covers.runtime.celeryconfig")
