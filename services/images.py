"""Keeping copies of each succeeded cover's images in storage the app owns.

Kie deletes cover images 14 days after making them. When ``COVERS_IMAGE_STORE``
is set, every job that ends ``succeeded`` gets a second, separate task,
``covers.store_images`` (kwargs ``jobId``), that copies each image into the
store. The job is already succeeded when it runs: a copy that fails never
changes the job's state, only the record's ``stored_images`` / ``images_error``.

The store is a local directory (a plain path; directories are made as needed)
or any fsspec URL (``s3://bucket/covers``, ``file:///srv/covers``, ...; fsspec
is the optional extra ``kie-covers[images]``, plus the backend's own package,
e.g. s3fs). Each image becomes ``<music task id>/<job id>-<n>.<ext>`` under it,
``ext`` from the answer's content type (``png``, ``jpeg``, ``webp``).

Each download streams (``COVERS_IMAGE_MAX_BYTES`` checked against
Content-Length first, then counted while reading; sha256 computed on the way)
into a hidden temporary name beside the final one, which is renamed into place
only once complete; a failed download deletes it.

Retries use the project's own due set (`config.keys.IMAGES_DUE`), dispatched
by every worker's dispatcher thread, like outcome notices: no task sleeps, no
Celery countdown (which keeps tasks in worker memory and, on a Redis broker, is
redelivered once it outlasts the visibility timeout), and the due set doubles
as a lease, so a worker killed mid-copy is replaced after
``COVERS_REDISPATCH_AFTER`` seconds. Network errors, timeouts, 408/429 and 5xx
answers, and store errors are retried with full-jitter backoff
(``COVERS_BACKOFF_BASE``/``COVERS_BACKOFF_MAX``) until ``COVERS_MAX_ATTEMPTS``
runs have failed; a 404 (or another 4xx), a content type other than PNG, JPEG
or WebP, or an image over the limit is final for that image at once.

Record fields (job hash, written only here): ``stored_images`` (JSON list, in
image order), ``images_error`` (why copying gave up, or which images were
refused), ``images_refused`` (JSON, url -> reason; internal) and
``images_attempts`` (runs that hit a retryable fault).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from kie_covers.config import get_settings, keys
from kie_covers.core.errors import ImageFault, ImageRefused, StoreUnusable
from kie_covers.core.retry import full_jitter
from kie_covers.core.states import JobState
from kie_covers.runtime import metrics
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.messages import send_images
from kie_covers.store.jobs import Job, JobStore

log = logging.getLogger("covers.images")

#: Content types we keep, and the file extension each gets.
CONTENT_TYPES: dict[str, str] = {"image/png": "png", "image/jpeg": "jpeg",
                                 "image/webp": "webp"}
#: Bytes read from the network per chunk while streaming (64 KiB).
CHUNK_BYTES = 64 * 1024
#: Redirects followed per image before it is refused.
MAX_REDIRECTS = 5
#: What to install when the store is a URL and fsspec is missing.
FSSPEC_HINT = "pip install 'kie-covers[images]'"
#: HTTP statuses worth trying again later (besides every 5xx).
_RETRY_STATUSES = frozenset({408, 429})
#: A value with a URL scheme (``s3://``, ``file://``) or an fsspec chain
#: (``simplecache::s3://``); a one-letter scheme would be a Windows drive, so 2+.
_URL_VALUE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:(//|:)")
#: Characters kept in object-name parts; anything else (``/``, ``:``...) becomes ``_``
#: so a job id from a raw message can never climb out of the store.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class StoredImage:
    """One kept copy, as listed in ``get_cover(...)["stored_images"]``.

    Attributes:
        url: Kie's image URL it was copied from.
        location: where it is: an absolute path, or the store URL (credentials removed)
            plus the object name.
        sha256: hex digest of the stored bytes.
        bytes: size in bytes.
        content_type: ``image/png``, ``image/jpeg`` or ``image/webp``.
    """

    url: str
    location: str
    sha256: str
    bytes: int
    content_type: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready entry."""
        return {"url": self.url, "location": self.location, "sha256": self.sha256,
                "bytes": self.bytes, "content_type": self.content_type}


# --- the store ------------------------------------------------------------------------


def redact(value: str) -> str:
    """`value` without user info, query or fragment in any URL part (safe to log and keep)."""
    parts = []
    for part in value.split("::"):
        split = urlsplit(part)
        if not split.scheme or not split.netloc:
            parts.append(part)
            continue
        host = split.netloc.rpartition("@")[2]
        parts.append(urlunsplit((split.scheme, host, split.path, "", "")))
    return "::".join(parts)


def _scrub(message: str, raw: str) -> str:
    """`message` with the raw store value and any password in it replaced."""
    message = message.replace(raw, redact(raw))
    for part in raw.split("::"):
        with contextlib.suppress(ValueError):
            password = urlsplit(part).password
            if password:
                message = message.replace(password, "***")
    return message


def safe_part(value: str) -> str:
    """`value` usable as one path segment: only ``A-Za-z0-9_.-``, never leading ``.``."""
    cleaned = _UNSAFE.sub("_", value) or "_"
    return "_" + cleaned if cleaned.startswith(".") else cleaned


class Pending(Protocol):
    """An open temporary object being written."""

    handle: IO[bytes]


class ImageStore(Protocol):
    """Where copies go. `folder` and names are already safe path segments."""

    def begin(self, folder: str, stem: str) -> Pending:
        """Open a fresh temporary object for `stem` (removing leftovers of dead runs)."""
        ...

    def commit(self, pending: Pending, folder: str, name: str) -> str:
        """Close and move the temporary object to `folder/name`; returns its location."""
        ...

    def discard(self, pending: Pending) -> None:
        """Close and delete the temporary object (best effort)."""
        ...


def _temp_name(stem: str) -> str:
    # Hidden and suffixed, so a listing of the store never mistakes it for an image.
    return f".{stem}.{secrets.token_hex(6)}.part"


@dataclass
class _LocalPending:
    handle: IO[bytes]
    path: Path


class LocalStore:
    """A directory on this machine; relative paths are relative to the worker's cwd."""

    def __init__(self, root: str) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(root)))

    def begin(self, folder: str, stem: str) -> _LocalPending:
        directory = self.root / folder
        directory.mkdir(parents=True, exist_ok=True)
        # We hold the job's copy lock, so any temp file of this image is a dead run's.
        for stale in directory.glob(f".{stem}.*.part"):
            stale.unlink(missing_ok=True)
        path = directory / _temp_name(stem)
        # "x": never write into a file another run might hold; closed by commit/discard.
        return _LocalPending(open(path, "xb"), path)

    def commit(self, pending: Pending, folder: str, name: str) -> str:
        assert isinstance(pending, _LocalPending)
        pending.handle.flush()
        os.fsync(pending.handle.fileno())  # the rename must never expose unwritten bytes
        pending.handle.close()
        final = self.root / folder / name
        os.replace(pending.path, final)  # atomic on one filesystem: whole file or none
        return str(final)

    def discard(self, pending: Pending) -> None:
        assert isinstance(pending, _LocalPending)
        with contextlib.suppress(OSError):
            pending.handle.close()
        with contextlib.suppress(OSError):
            pending.path.unlink(missing_ok=True)


@dataclass
class _FsspecPending:
    handle: IO[bytes]
    path: str


class FsspecStore:
    """Any fsspec filesystem, from a URL such as ``s3://bucket/covers``."""

    def __init__(self, url: str) -> None:
        self.display = redact(url).rstrip("/")
        try:
            import fsspec  # optional: only stores given as URLs need it
        except ImportError:
            raise StoreUnusable(
                f"COVERS_IMAGE_STORE is a URL ({self.display}), which needs fsspec: "
                f"{FSSPEC_HINT}") from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:  # unknown protocol, backend not installed
            raise StoreUnusable(
                f"COVERS_IMAGE_STORE {self.display} cannot be opened: "
                f"{_scrub(str(exc), url)}") from None
        self.root = str(root).rstrip("/")

    def begin(self, folder: str, stem: str) -> _FsspecPending:
        directory = f"{self.root}/{folder}"
        self.fs.makedirs(directory, exist_ok=True)
        with contextlib.suppress(Exception):  # a leftover costs space, not correctness
            for stale in self.fs.glob(f"{directory}/.{stem}.*.part"):
                self.fs.rm(stale)
        path = f"{directory}/{_temp_name(stem)}"
        return _FsspecPending(self.fs.open(path, "wb"), path)

    def commit(self, pending: Pending, folder: str, name: str) -> str:
        assert isinstance(pending, _FsspecPending)
        pending.handle.close()  # object stores upload on close: complete or absent
        self.fs.mv(pending.path, f"{self.root}/{folder}/{name}")
        return f"{self.display}/{folder}/{name}"

    def discard(self, pending: Pending) -> None:
        assert isinstance(pending, _FsspecPending)
        with contextlib.suppress(Exception):
            pending.handle.close()
        with contextlib.suppress(Exception):
            if self.fs.exists(pending.path):
                self.fs.rm(pending.path)


def is_url(value: str) -> bool:
    """True when COVERS_IMAGE_STORE names an fsspec URL rather than a local path."""
    return bool(_URL_VALUE.match(value.strip()))


def open_store(value: str) -> ImageStore:
    """The store COVERS_IMAGE_STORE names. Raises `StoreUnusable` if it cannot be used."""
    value = value.strip()
    return FsspecStore(value) if is_url(value) else LocalStore(value)


# --- downloading ----------------------------------------------------------------------

_sessions: dict[int, requests.Session] = {}


def _session() -> requests.Session:
    pid = os.getpid()
    if pid not in _sessions:
        _sessions[pid] = requests.Session()
    return _sessions[pid]


def _open(url: str, timeout_s: float) -> requests.Response:
    """GET `url` streaming, following at most MAX_REDIRECTS http(s) redirects by hand.

    Redirects are followed by hand so that none leaves http(s) or drops from https
    to http (requests would follow any scheme it has an adapter for).
    """
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        scheme = urlsplit(current).scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageRefused(f"not an http(s) URL: {current}")
        try:
            answer = _session().get(
                current, stream=True, timeout=timeout_s, allow_redirects=False,
                # identity: store exactly the served bytes, and make Content-Length mean them
                headers={"Accept": ", ".join(CONTENT_TYPES), "Accept-Encoding": "identity"})
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema) as exc:
            raise ImageRefused(f"bad URL: {type(exc).__name__}") from None
        except requests.Timeout:
            raise ImageFault(f"timed out after {timeout_s:g}s") from None
        except requests.RequestException as exc:
            raise ImageFault(f"network error: {type(exc).__name__}") from None
        if not answer.is_redirect:
            return answer
        target = urljoin(current, answer.headers.get("Location", ""))
        answer.close()
        new_scheme = urlsplit(target).scheme.lower()
        if new_scheme not in ("http", "https") or (scheme, new_scheme) == ("https", "http"):
            raise ImageRefused(f"redirect from {scheme} to another scheme refused")
        current = target
    raise ImageRefused(f"more than {MAX_REDIRECTS} redirects")


def _content_type(answer: requests.Response) -> str:
    """The answer's media type, lower case, without parameters."""
    return answer.headers.get("Content-Type", "").split(";")[0].strip().lower()


def copy_one(url: str, store: ImageStore, folder: str, stem: str, *, max_bytes: int,
             timeout_s: float, deadline: float) -> StoredImage:
    """Download one image into `store` as ``folder/stem.<ext>``.

    Args:
        url: the image URL (http or https).
        store: where to put it.
        folder, stem: safe path segments (music task id; ``<job id>-<n>``).
        max_bytes: largest image accepted, bytes (COVERS_IMAGE_MAX_BYTES).
        timeout_s: seconds for the connection and for each read (KIE_HTTP_TIMEOUT).
        deadline: `time.monotonic()` value after which the download is abandoned
            (a retryable timeout), so a trickling server cannot outlive the run's lease.

    Raises:
        ImageRefused: final for this image (404/4xx, content type, size, URL).
        ImageFault: worth another try (network, timeout, 5xx, store error).
    """
    with _open(url, timeout_s) as answer:
        status = answer.status_code
        if status >= 500 or status in _RETRY_STATUSES:
            raise ImageFault(f"HTTP {status}")
        if status in (404, 410):
            raise ImageRefused(f"HTTP {status}: gone (Kie deletes images after 14 days)")
        if status != 200:
            raise ImageRefused(f"HTTP {status}")
        content_type = _content_type(answer)
        ext = CONTENT_TYPES.get(content_type)
        if ext is None:
            raise ImageRefused(f"content type {content_type or '(none)'!r} is not "
                               f"{', '.join(CONTENT_TYPES)}")
        declared: int | None = None
        with contextlib.suppress(ValueError):
            declared = int(answer.headers.get("Content-Length", ""))
        # Refuse before writing anything when the server says it is too large.
        if declared is not None and declared > max_bytes:
            raise ImageRefused(f"{declared} bytes is over COVERS_IMAGE_MAX_BYTES ({max_bytes})")
        try:
            pending = store.begin(folder, stem)
        except OSError as exc:
            raise ImageFault(f"store error: {type(exc).__name__}: {exc}") from None
        try:
            digest = hashlib.sha256()
            size = 0
            try:
                for chunk in answer.iter_content(CHUNK_BYTES):
                    size += len(chunk)
                    # Counted too, since Content-Length may be absent or wrong.
                    if size > max_bytes:
                        raise ImageRefused(f"over COVERS_IMAGE_MAX_BYTES ({max_bytes} bytes)")
                    if time.monotonic() > deadline:
                        raise ImageFault("download too slow: the run's time is up")
                    digest.update(chunk)
                    pending.handle.write(chunk)
            except requests.RequestException as exc:
                raise ImageFault(f"network error while reading: {type(exc).__name__}") from None
            if size == 0:
                raise ImageFault("empty answer")
            if declared is not None and size != declared:
                raise ImageFault(f"got {size} of {declared} bytes")
            location = store.commit(pending, folder, f"{stem}.{ext}")
        except BaseException:
            store.discard(pending)  # never leave a half file behind
            raise
    return StoredImage(url, location, digest.hexdigest(), size, content_type)


# --- the task -------------------------------------------------------------------------

_SET_IF_EXISTS = """
-- KEYS[1] job; ARGV field, value, ... Never recreate an expired or forgotten record.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


_UNLOCK = """
-- Release the copy lock only if this run still holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _write(store: JobStore, job_id: str, **values: str) -> None:
    """Set record fields of a job that still exists (and bump ``updated_at``)."""
    args: list[str] = []
    for name, value in {**values, "updated_at": repr(time.time())}.items():
        args += [name, value]
    store.redis.register_script(_SET_IF_EXISTS)(keys=[keys.job(job_id)], args=args)


def schedule_images(store: JobStore, job: Job) -> None:
    """Put a succeeded job's copy in the due set (so it is never lost) and send it now."""
    lease = get_settings().redispatch_after
    store.redis.zadd(keys.IMAGES_DUE, {job.job_id: int((time.time() + lease) * 1000)})
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
    store.redis.hdel(keys.job(job_id), "images_refused", "images_attempts", "images_error")
    schedule_images(store, job)
    return True


def _ordered(job: Job, stored: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored entries in the order of the job's images."""
    return [stored[url] for url in job.images if url in stored]


def _describe(job: Job, problems: dict[str, str]) -> str:
    """``image 0: reason; image 1: reason`` in image order."""
    return "; ".join(f"image {n}: {problems[url]}" for n, url in enumerate(job.images)
                     if url in problems)


def copy_images(job_id: str) -> str:
    """Copy what is not yet stored of one succeeded job's images (one run).

    Returns:
        ``stored`` (every image kept), ``refused`` (done; some images refused, see
        ``images_error``), ``retrying``, ``gave_up``, ``busy`` (another run holds the
        job's copy lock) or ``nothing`` (unknown job, not succeeded, no images).
    """
    settings = get_settings()
    store = get_store()
    lock = keys.images_lock(job_id)
    token = secrets.token_hex(8)
    # The lock lives a whole lease; a run ends well within half of one (see deadline).
    if not store.redis.set(lock, token, nx=True, px=int(settings.redispatch_after * 1000)):
        return "busy"
    try:
        job = store.get(job_id)
        if job is None or job.state is not JobState.SUCCEEDED or not job.images:
            store.redis.zrem(keys.IMAGES_DUE, job_id)
            return "nothing"
        # This run's lease: if the worker dies now, the dispatcher sends the job again.
        store.redis.zadd(keys.IMAGES_DUE, {
            job_id: int((time.time() + settings.redispatch_after) * 1000)})
        return _run(store, job)
    finally:
        store.redis.register_script(_UNLOCK)(keys=[lock], args=[token])


def _run(store: JobStore, job: Job) -> str:
    settings = get_settings()
    stored = {entry["url"]: entry for entry in job.stored_images}
    refused: dict[str, str] = json.loads(job.raw.get("images_refused") or "{}")
    todo = [(n, url) for n, url in enumerate(job.images)
            if url not in stored and url not in refused]
    if not todo:
        log.info("job %s: all %d images already handled; nothing downloaded", job.job_id,
                 len(job.images))
        return _finish(store, job, stored, refused, {}, gave_up=False)
    if not settings.image_store:
        return _finish(store, job, stored, refused, {
            url: "COVERS_IMAGE_STORE is not set on the worker" for _, url in todo},
            gave_up=True)
    try:
        target = open_store(settings.image_store)
    except StoreUnusable as exc:  # a setting to fix, not a fault to retry
        log.error("job %s: image store unusable: %s", job.job_id, exc)
        return _finish(store, job, stored, refused, {url: str(exc) for _, url in todo},
                       gave_up=True)
    # Half the lease, so the run (and its lock) ends before anyone else may start one.
    deadline = time.monotonic() + settings.redispatch_after / 2
    folder = safe_part(job.task_id)
    faults: dict[str, str] = {}
    deferred = False
    for n, url in todo:
        if time.monotonic() > deadline:
            deferred = True  # time is up, but nothing failed: continue in a fresh run
            break
        try:
            image = copy_one(url, target, folder, f"{safe_part(job.job_id)}-{n}",
                             max_bytes=settings.image_max_bytes,
                             timeout_s=settings.kie_http_timeout, deadline=deadline)
        except ImageRefused as exc:
            refused[url] = str(exc)
            log.warning("job %s: image %d refused: %s", job.job_id, n, exc)
        except ImageFault as exc:
            faults[url] = _scrub(str(exc), settings.image_store)
            log.info("job %s: image %d not stored yet: %s", job.job_id, n, faults[url])
        except Exception as exc:  # fsspec backends raise their own types; retry those
            faults[url] = _scrub(f"store error: {type(exc).__name__}: {exc}",
                                 settings.image_store)
            log.warning("job %s: image %d: %s", job.job_id, n, faults[url])
        else:
            stored[url] = image.to_dict()
            # Recorded at once, so a run that dies later never downloads this one again.
            _write(store, job.job_id, stored_images=json.dumps(_ordered(job, stored)))
            metrics.inc("images_stored_total")
            metrics.inc("image_bytes_stored_total", image.bytes)
            log.info("job %s: image %d stored (%d bytes) at %s", job.job_id, n, image.bytes,
                     image.location)
    if faults:
        attempts = store.count(job.job_id, "images_attempts")
        if attempts >= settings.max_attempts:
            return _finish(store, job, stored, refused, faults, gave_up=True,
                           attempts=attempts)
        wait = full_jitter(attempts, settings.backoff_base, settings.backoff_max)
        _write(store, job.job_id, stored_images=json.dumps(_ordered(job, stored)),
               images_refused=json.dumps(refused))
        store.redis.zadd(keys.IMAGES_DUE, {job.job_id: int((time.time() + wait) * 1000)})
        log.info("job %s: %d image(s) to try again in %.1fs (attempt %d of %d)", job.job_id,
                 len(faults), wait, attempts, settings.max_attempts)
        return "retrying"
    if deferred:
        _write(store, job.job_id, stored_images=json.dumps(_ordered(job, stored)),
               images_refused=json.dumps(refused))
        store.redis.zadd(keys.IMAGES_DUE, {job.job_id: int(time.time() * 1000)})
        return "retrying"
    return _finish(store, job, stored, refused, {}, gave_up=False)


def _finish(store: JobStore, job: Job, stored: dict[str, dict[str, Any]],
            refused: dict[str, str], faults: dict[str, str], *, gave_up: bool,
            attempts: int | None = None) -> str:
    """Write the final record fields and leave the due set."""
    problems = {**refused, **faults}
    if gave_up:
        tries = f" after {attempts} attempts" if attempts is not None else ""
        error = f"gave up{tries}: {_describe(job, problems)}"
    elif refused:
        error = f"not stored: {_describe(job, refused)}"
    else:
        error = ""  # also clears an earlier give-up once a later run stores the rest
    _write(store, job.job_id, stored_images=json.dumps(_ordered(job, stored)),
           images_refused=json.dumps(refused), images_error=error)
    store.redis.zrem(keys.IMAGES_DUE, job.job_id)
    if error:
        log.warning("job %s: image copy ended: %s", job.job_id, error)
        return "gave_up" if gave_up else "refused"
    log.info("job %s: all %d images stored", job.job_id, len(job.images))
    return "stored"
