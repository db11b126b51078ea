"""The task that delivers one ended job's outcome notice (`covers.notify_app`).

Sent from the due set when the process that ended the job could not deliver
the notice itself (see `kie_covers.services.notify`).
"""

from __future__ import annotations

from kie_covers.runtime.app import app
from kie_covers.runtime.messages import NOTIFY_TASK
from kie_covers.services.notify import deliver


@app.task(name=NOTIFY_TASK, acks_late=True, ignore_result=True)
def notify_app(jobId: str) -> str:
    """Deliver one job's notice; returns what happened (``delivered``, ``retrying``, ...)."""
    return deliver(str(jobId))
