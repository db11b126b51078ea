"""Keeping copies of each succeeded cover's images in storage the app owns.

Kie deletes cover images 14 days after making them. When ``COVERS_IMAGE_STORE``
is set, every job that ends ``succeeded`` gets a second, separate task,
``covers.store_images`` (kwargs ``jobId``), that copies each image into the
store. The job is already succeeded when it runs: a copy that fails never
changes the job's state, only the record's ``stored_images`` / ``images_error``.

This module is the copy run (`copy_images`) and its scheduling; the store
itself (a local directory or an fsspec URL) is `kie_covers.services.image_store`,
and one image's download `kie_covers.services.image_fetch`. Each image becomes
``<music task id>/<job id>-<n>.<ext>`` in the store, ``ext`` from the answer's
content type (``png``, ``jpeg``, ``webp``).

Retries use the project's own due set (`Due.COPIES`), dispatched by every
worker's dispatcher thread, like outcome notices: no task sleeps, no Celery
countdown (which keeps tasks in worker memory and, on a Redis broker, is
redelivered once it outlasts the visibility timeout), and the due set doubles
as a lease, so a worker killed mid-copy is replaced after
``COVERS_REDISPATCH_AFTER`` seconds. Network errors, timeouts, 408/429 and 5xx
answers, and store errors are retried with full-jitter backoff
(``COVERS_BACKOFF_BASE``/``COVERS_BACKOFF_MAX``) until ``COVERS_MAX_ATTEMPTS``
runs have failed; a 404 (or another 4xx), a content type other than PNG, JPEG
or WebP, or an image over the limit is final for that image at once.

Record fields (written only here, through `JobStore.update`): ``stored_images``
(in image order), ``images_error`` (why copying gave up, or which images were
refused), ``images_refused`` (url -> reason; internal) and ``images_attempts``
(runs that hit a retryable fault).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kie_covers.config import Settings, get_settings
from kie_covers.core.errors import ImageFault, ImageRefused, StoreUnusable
from kie_covers.core.retry import full_jitter
from kie_covers.core.states import JobState
from kie_covers.runtime import metrics
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.messages import send_images
from kie_covers.services.image_fetch import StoredImage, copy_one
from kie_covers.services.image_store import (
    FsspecStore,
    ImageStore,
    LocalStore,
    open_store,
    safe_part,
    scrub,
)
from kie_covers.store.due import Due
from kie_covers.store.jobs import Counter, JobStore
from kie_covers.store.record import Job

# The store and download names are re-exported: callers (and tests) import them here.
__all__ = ["FsspecStore", "ImageStore", "LocalStore", "StoredImage", "copy_images",
           "copy_one", "open_store", "retry_images", "schedule_images"]

log = logging.getLogger("covers.images")


def schedule_images(store: JobStore, job: Job) -> None:
    """Put a succeeded job's copy in the due set (so it is never lost) and send it now.

    The due entry is COVERS_REDISPATCH_AFTER seconds ahead: if the message is lost,
    the dispatcher sends it again then.
    """
    store.due.later(Due.COPIES, job.job_id, get_settings().redispatch_after)
    try:
        send_images(job.job_id, job.queue or None)
    except Exception:  # the job already succeeded; the dispatcher sends it after the lease
        log.warning("job %s: could not send the image copy now; the dispatcher will",
                    job.job_id, exc_info=True)


def retry_images(job_id: str) -> bool:
    """Copy a job's images again after fixing the store or raising the size limit.

    Forgets earlier refusals, the attempt count and the error (copies already stored
    are kept and not downloaded again), then schedules a copy as at the job's end.

    Returns:
        False when the job is unknown or has not succeeded (nothing scheduled).
    """
    store = get_store()
    job = store.get(job_id)
    if job is None or job.state is not JobState.SUCCEEDED or not job.images:
        return False
    store.update(job_id, images_refused={}, images_attempts=0, images_error=None)
    schedule_images(store, job)
    return True


def copy_images(job_id: str) -> str:
    """Copy what is not yet stored of one succeeded job's images (one run).

    Returns:
        ``stored`` (every image kept), ``refused`` (done; some images refused, see
        ``images_error``), ``retrying``, ``gave_up``, ``busy`` (another run holds the
        job's copy lock) or ``nothing`` (unknown job, not succeeded, no images).
    """
    settings = get_settings()
    store = get_store()
    # The lock lives a whole lease; a run ends well within half of one (see _copy_todo).
    lock = store.copy_lock(job_id, settings.redispatch_after)
    if not lock.take():
        return "busy"
    try:
        job = store.get(job_id)
        if job is None or job.state is not JobState.SUCCEEDED or not job.images:
            store.due.leave(Due.COPIES, job_id)
            return "nothing"
        # This run's lease: if the worker dies now, the dispatcher sends the job again.
        store.due.later(Due.COPIES, job_id, settings.redispatch_after)
        return _run(store, job, settings)
    finally:
        lock.release()


@dataclass
class _Copies:
    """What one run knows of a job's images.

    Attributes:
        job: the record as the run began.
        stored: url -> `StoredImage.to_dict` entry, for every image kept so far.
        refused: url -> why it is never copied (earlier runs' and this one's).
        faults: url -> why it failed this run (worth another try).
    """

    job: Job
    stored: dict[str, dict[str, Any]]
    refused: dict[str, str]
    faults: dict[str, str] = field(default_factory=dict)

    def todo(self) -> list[tuple[int, str]]:
        """(index, url) of the images neither stored nor refused, in image order."""
        return [(n, url) for n, url in enumerate(self.job.images)
                if url not in self.stored and url not in self.refused]

    def ordered(self) -> list[dict[str, Any]]:
        """Stored entries in the order of the job's images."""
        return [self.stored[url] for url in self.job.images if url in self.stored]

    def describe(self, problems: dict[str, str]) -> str:
        """``image 0: reason; image 1: reason`` in image order."""
        return "; ".join(f"image {n}: {problems[url]}" for n, url in enumerate(self.job.images)
                         if url in problems)


def _run(store: JobStore, job: Job, settings: Settings) -> str:
    """Copy the job's images not yet handled; the outcome as `copy_images` returns it."""
    copies = _Copies(job, {entry["url"]: entry for entry in job.stored_images},
                     dict(job.images_refused))
    todo = copies.todo()
    if not todo:
        log.info("job %s: all %d images already handled; nothing downloaded", job.job_id,
                 len(job.images))
        return _finish(store, copies, gave_up=False)
    target = _target(job, settings.image_store)
    if isinstance(target, str):
        copies.faults = {url: target for _, url in todo}
        return _finish(store, copies, gave_up=True)
    deferred = _copy_todo(store, copies, target, todo, settings)
    if copies.faults:
        return _retry_later(store, copies, settings)
    if deferred:
        # Nothing failed, the run's time ran out: go on in a fresh run at once.
        store.update(job.job_id, stored_images=copies.ordered(), images_refused=copies.refused)
        store.due.later(Due.COPIES, job.job_id, 0)
        return "retrying"
    return _finish(store, copies, gave_up=False)


def _target(job: Job, value: str | None) -> ImageStore | str:
    """The image store COVERS_IMAGE_STORE (`value`) names, or why there is none."""
    if not value:
        return "COVERS_IMAGE_STORE is not set on the worker"
    try:
        return open_store(value)
    except StoreUnusable as exc:  # a setting to fix, not a fault to retry
        log.error("job %s: image store unusable: %s", job.job_id, exc)
        return str(exc)


def _copy_todo(store: JobStore, copies: _Copies, target: ImageStore,
               todo: list[tuple[int, str]], settings: Settings) -> bool:
    """Copy each image of `todo` into `target`, noting refusals and faults in `copies`.

    Returns:
        True when the run's time (half of COVERS_REDISPATCH_AFTER) ran out before
        every image was tried.
    """
    job = copies.job
    raw_store = settings.image_store or ""
    # Half the lease, so the run (and its lock) ends before anyone else may start one.
    deadline = time.monotonic() + settings.redispatch_after / 2
    folder = safe_part(job.music_task_id)
    for n, url in todo:
        if time.monotonic() > deadline:
            return True
        try:
            image = copy_one(url, target, folder, f"{safe_part(job.job_id)}-{n}",
                             max_bytes=settings.image_max_bytes,
                             timeout_s=settings.kie_http_timeout, deadline=deadline,
                             allow_private=settings.allow_private_targets)
        except ImageRefused as exc:
            copies.refused[url] = str(exc)
            log.warning("job %s: image %d refused: %s", job.job_id, n, exc)
        except ImageFault as exc:
            copies.faults[url] = scrub(str(exc), raw_store)
            log.info("job %s: image %d not stored yet: %s", job.job_id, n, copies.faults[url])
        except Exception as exc:  # fsspec backends raise their own types; retry those
            copies.faults[url] = scrub(f"store error: {type(exc).__name__}: {exc}", raw_store)
            log.warning("job %s: image %d: %s", job.job_id, n, copies.faults[url])
        else:
            copies.stored[url] = image.to_dict()
            # Recorded at once, so a run that dies later never downloads this one again.
            store.update(job.job_id, stored_images=copies.ordered())
            metrics.inc("images_stored_total")
            metrics.inc("image_bytes_stored_total", image.bytes)
            log.info("job %s: image %d stored (%d bytes) at %s", job.job_id, n, image.bytes,
                     image.location)
    return False


def _retry_later(store: JobStore, copies: _Copies, settings: Settings) -> str:
    """Count a run with faults; try again after a backoff, or give up after
    COVERS_MAX_ATTEMPTS such runs."""
    job_id = copies.job.job_id
    attempts = store.count(job_id, Counter.IMAGES_ATTEMPTS)
    if attempts is None:  # the job was forgotten or expired meanwhile: nothing to copy
        store.due.leave(Due.COPIES, job_id)
        return "nothing"
    if attempts >= settings.max_attempts:
        return _finish(store, copies, gave_up=True, attempts=attempts)
    wait = full_jitter(attempts, settings.backoff_base, settings.backoff_max)
    store.update(job_id, stored_images=copies.ordered(), images_refused=copies.refused)
    store.due.later(Due.COPIES, job_id, wait)
    log.info("job %s: %d image(s) to try again in %.1fs (attempt %d of %d)", job_id,
             len(copies.faults), wait, attempts, settings.max_attempts)
    return "retrying"


def _finish(store: JobStore, copies: _Copies, *, gave_up: bool,
            attempts: int | None = None) -> str:
    """Write the final record fields and leave the due set."""
    job = copies.job
    error: str | None
    if gave_up:
        tries = f" after {attempts} attempts" if attempts is not None else ""
        error = f"gave up{tries}: {copies.describe({**copies.refused, **copies.faults})}"
    elif copies.refused:
        error = f"not stored: {copies.describe(copies.refused)}"
    else:
        error = None  # also clears an earlier give-up once a later run stores the rest
    store.update(job.job_id, stored_images=copies.ordered(), images_refused=copies.refused,
                 images_error=error)
    store.due.leave(Due.COPIES, job.job_id)
    if error:
        log.warning("job %s: image copy ended: %s", job.job_id, error)
        return "gave_up" if gave_up else "refused"
    log.info("job %s: all %d images stored", job.job_id, len(job.images))
    return "stored"
