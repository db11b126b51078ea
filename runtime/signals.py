"""Signals for apps that would rather hear of job endings in-process.

``cover_finished`` is sent once per job ending, in the process that ended it
(a worker, or the callback endpoint), with ``job_id`` and ``record`` (the
`get_cover` dict). Celery's own ``task_success`` / ``task_failure`` fire as
usual too, for endings that happen inside the cover task.

    from kie_covers.runtime.signals import cover_finished

    @cover_finished.connect
    def on_cover(sender, job_id, record, **kwargs): ...
"""

from celery.utils.dispatch import Signal

cover_finished = Signal(name="cover_finished", providing_args={"job_id", "record"})
