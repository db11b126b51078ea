"""Every Redis key this project writes, in one place.

All keys share the ``covers:`` prefix so an operator can find them with
``SCAN MATCH covers:*``; Celery's own keys (``celery-task-meta-*``, queues) are
Celery's.
"""

PREFIX = "covers:"

#: Sorted set of job ids scored by the unix time (ms) when a worker should next
#: look at the job: its next poll, the end of a retry wait, or the end of the
#: lease of a run in progress (a run that dies is picked up again from here).
DUE = PREFIX + "due"


def job(job_id: str) -> str:
    """Hash: one job's record (see `tasks.jobs.JobStore`)."""
    return f"{PREFIX}job:{job_id}"


def music(task_id: str) -> str:
    """String: the job id currently responsible for a music task id."""
    return f"{PREFIX}music:{task_id}"


def cover(cover_task_id: str) -> str:
    """String: the job id that owns a Kie cover task id (for callbacks)."""
    return f"{PREFIX}cover:{cover_task_id}"


def lock(job_id: str) -> str:
    """String: token of the run that currently works on a job."""
    return f"{PREFIX}lock:{job_id}"


def early_callback(cover_task_id: str) -> str:
    """String: a callback that arrived before its submit was recorded (JSON)."""
    return f"{PREFIX}early:{cover_task_id}"
