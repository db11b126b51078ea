"""Downloading one image from Kie into the image store (`copy_one`).

Each download streams: COVERS_IMAGE_MAX_BYTES is checked against Content-Length
first, then counted while reading, and the sha256 is computed on the way. The
bytes go into a temporary object of the store (`ImageStore.begin`) that is moved
into place only once complete; a failed download deletes it.

Redirects are followed by hand (at most `MAX_REDIRECTS`), never off http(s) and
never from https down to http. Network errors, timeouts, 408/429 and 5xx answers
and store errors raise `ImageFault` (try again later); a 404 (or another 4xx), a
content type other than PNG, JPEG or WebP, or an image over the limit raise
`ImageRefused` (never for this image).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from kie_covers.core.errors import ImageFault, ImageRefused
from kie_covers.services.image_store import ImageStore, Pending

#: Content types we keep, and the file extension each gets.
CONTENT_TYPES: dict[str, str] = {"image/png": "png", "image/jpeg": "jpeg",
                                 "image/webp": "webp"}
#: Bytes read from the network per chunk while streaming (64 KiB).
CHUNK_BYTES = 64 * 1024
#: Redirects followed per image before it is refused.
MAX_REDIRECTS = 5
#: HTTP statuses worth trying again later (besides every 5xx).
_RETRY_STATUSES = frozenset({408, 429})


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


# One session per process: connections are reused between images, and a forked
# worker child never shares its parent's sockets.
_sessions: dict[int, requests.Session] = {}


def _session() -> requests.Session:
    pid = os.getpid()
    if pid not in _sessions:
        _sessions[pid] = requests.Session()
    return _sessions[pid]


def _get(url: str, timeout_s: float) -> requests.Response:
    """One streaming GET of `url`, without following redirects."""
    try:
        return _session().get(
            url, stream=True, timeout=timeout_s, allow_redirects=False,
            # identity: store exactly the served bytes, and make Content-Length mean them
            headers={"Accept": ", ".join(CONTENT_TYPES), "Accept-Encoding": "identity"})
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema) as exc:
        raise ImageRefused(f"bad URL: {type(exc).__name__}") from None
    except requests.Timeout:
        raise ImageFault(f"timed out after {timeout_s:g}s") from None
    except requests.RequestException as exc:
        raise ImageFault(f"network error: {type(exc).__name__}") from None


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
        answer = _get(current, timeout_s)
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


def _accept(answer: requests.Response, max_bytes: int) -> tuple[str, str, int | None]:
    """Check an answer before reading its body.

    Returns:
        (content type, file extension, declared Content-Length or None).

    Raises:
        ImageFault: 408, 429 or 5xx.
        ImageRefused: any other status than 200, a content type we do not keep, or a
            Content-Length over `max_bytes`.
    """
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
    return content_type, ext, declared


def _stream(answer: requests.Response, pending: Pending, max_bytes: int,
            deadline: float) -> tuple[str, int]:
    """Write the body into `pending`; returns (sha256 hex digest, size in bytes).

    Raises:
        ImageRefused: more than `max_bytes` bytes.
        ImageFault: the network failed, or `deadline` (monotonic seconds) passed.
    """
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
    return digest.hexdigest(), size


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
        content_type, ext, declared = _accept(answer, max_bytes)
        try:
            pending = store.begin(folder, stem)
        except OSError as exc:
            raise ImageFault(f"store error: {type(exc).__name__}: {exc}") from None
        try:
            sha256, size = _stream(answer, pending, max_bytes, deadline)
            if size == 0:
                raise ImageFault("empty answer")
            if declared is not None and size != declared:
                raise ImageFault(f"got {size} of {declared} bytes")
            location = store.commit(pending, folder, f"{stem}.{ext}")
        except BaseException:
            store.discard(pending)  # never leave a half file behind
            raise
    return StoredImage(url, location, sha256, size, content_type)
