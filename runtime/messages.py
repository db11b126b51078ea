"""The Celery messages this project sends, by task name: the one place that names them.

Senders (the producer API, the dispatcher, retries, job endings) send by name
and never import the task modules, so importing them never registers tasks and
the layers below `kie_covers.tasks` stay free of it. The task modules register
under these same names.
"""

from __future__ import annotations

from kie_covers.config import get_settings
from kie_covers.runtime.app import app

#: The cover task (kwargs exactly as Kie spells them: ``taskId``, ``callBackUrl``).
COVER_TASK = "covers.generate_cover"
#: Delivers one ended job's outcome notice to the app (kwargs ``jobId``).
NOTIFY_TASK = "covers.notify_app"
#: Copies one succeeded job's images to COVERS_IMAGE_STORE (kwargs ``jobId``).
IMAGES_TASK = "covers.store_images"
#: The beat's round of scheduled retries of failed covers (kwargs ``interval_s``).
RETRY_TASK = "covers.retry_failures"


def send_job(job_id: str, music_task_id: str, callback_url: str,
             queue: str | None = None) -> None:
    """Send (or send again) the message of a job, under its job id.

    Args:
        queue: Celery queue (default: COVERS_QUEUE).
    """
    app.send_task(COVER_TASK, kwargs={"taskId": music_task_id, "callBackUrl": callback_url},
                  task_id=job_id, queue=queue or get_settings().queue)


def send_notice(job_id: str, queue: str | None = None) -> None:
    """Send the message that delivers a job's outcome notice (the due set's way)."""
    app.send_task(NOTIFY_TASK, kwargs={"jobId": job_id}, queue=queue or get_settings().queue)


def send_images(job_id: str, queue: str | None = None) -> None:
    """Send the message that copies a job's images to the image store."""
    app.send_task(IMAGES_TASK, kwargs={"jobId": job_id}, queue=queue or get_settings().queue)
