"""The task that copies a succeeded job's images to the image store (`covers.store_images`).

See `kie_covers.services.images` for what a copy does and how it is retried.
"""

from __future__ import annotations

from kie_covers.runtime.app import app
from kie_covers.runtime.messages import IMAGES_TASK
from kie_covers.services.images import copy_images


@app.task(name=IMAGES_TASK, acks_late=True, ignore_result=True)
def store_images(jobId: str) -> str:
    """Copy one succeeded job's images into COVERS_IMAGE_STORE; returns the outcome."""
    return copy_images(str(jobId))
