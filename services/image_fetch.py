"""Downloading one image from Kie into the image store (`copy_one`).

Where it connects: the URL's host is resolved, every answer is checked with the
outbound address policy (`kie_covers.core.addresses`; loopback and private
addresses only with COVERS_ALLOW_PRIVATE_TARGETS; one refused answer refuses
the host) and the connection goes to exactly those checked addresses, tried in
the resolver's order, with no second lookup. HTTP is spoken over that socket
with http.client; for https the certificate is checked against the URL's host
name (SNI). URLs that carry user info are refused: credentials are never sent.

Redirects (301, 302, 303, 307, 308) are followed by hand, at most
`MAX_REDIRECTS`, each hop checked like the first: never off http(s), never from
https down to http, never to a refused address or a URL with user info.

What is kept is decided by the file's first bytes (PNG, JPEG or WebP), whatever
its Content-Type says. Each download streams: COVERS_IMAGE_MAX_BYTES is checked
against Content-Length first, then counted while reading, and the sha256 is
computed on the way. The bytes go into a temporary object of the store
(`ImageStore.begin`) that is moved into place only once complete; a failed
download deletes it.

Network errors (a failed DNS lookup included), timeouts, 408/429 and 5xx
answers and store errors raise `ImageFault` (try again later); a refused target
or URL, a 404 (or another 4xx), a file that is not PNG, JPEG or WebP, or an
image over the limit raise `ImageRefused` (never for this image). Messages name
the host at most, never a URL's path, query or user info.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import itertools
import re
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from kie_covers.core.addresses import TargetRefused, pick_address
from kie_covers.core.errors import ImageFault, ImageRefused
from kie_covers.runtime.outbound import resolve
from kie_covers.services.image_store import ImageStore, Pending

#: Media types we keep, and the file extension each gets.
CONTENT_TYPES: dict[str, str] = {"image/png": "png", "image/jpeg": "jpeg",
                                 "image/webp": "webp"}
#: Bytes read from the network per chunk while streaming (at most 64 KiB).
CHUNK_BYTES = 64 * 1024
#: Redirects followed per image before it is refused.
MAX_REDIRECTS = 5
#: User-Agent header of image downloads.
USER_AGENT = "kie-covers"
#: First bytes needed to tell the kept types apart (WebP: "RIFF", size, "WEBP").
SNIFF_BYTES = 12
#: HTTP statuses worth trying again later (besides every 5xx).
_RETRY_STATUSES = frozenset({408, 429})
#: Statuses whose Location is followed.
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: A host name or IP literal after IDNA encoding: nothing that could end a header line.
_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")
#: Left as they are when the request target is quoted: RFC 3986's reserved
#: characters and "%" (bytes the URL already escaped stay escaped once).
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


@dataclass(frozen=True)
class StoredImage:
    """One kept copy, as listed in ``get_cover(...)["stored_images"]``.

    Attributes:
        url: Kie's image URL it was copied from.
        location: where it is: an absolute path, or the store URL (credentials removed)
            plus the object name.
        sha256: hex digest of the stored bytes.
        bytes: size in bytes.
        content_type: ``image/png``, ``image/jpeg`` or ``image/webp``, by the file's
            first bytes.
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


def sniff(head: bytes) -> str | None:
    """The media type a file's first bytes announce (PNG, JPEG or WebP), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class _Target:
    """One checked http(s) URL, split for a request.

    Attributes:
        url: the URL (without user info: URLs with it are refused).
        scheme: ``http`` or ``https``.
        host: host name (IDNA-encoded) or IP literal (IPv6 without brackets).
        port: TCP port (the scheme's default when the URL names none).
        path: the request target: path and query, quoted.
    """

    url: str
    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        """The Host header: the host (IPv6 in brackets), with the port unless default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _target(url: str) -> _Target:
    """Split `url` for a request.

    Raises:
        ImageRefused: not http(s), user info in it, no or a bad host, a bad port.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ImageRefused(f"not an http(s) URL (scheme {scheme or '(none)'!r})")
    # Credentials in a URL are never sent anywhere (requests would send them as Basic auth).
    if "@" in parts.netloc:
        raise ImageRefused("the URL carries user info (credentials): refused")
    try:
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise ImageRefused("the URL's host or port is malformed") from None
    if not _HOST.match(host) or port == 0:
        raise ImageRefused("the URL's host or port is malformed")
    path = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return _Target(url, scheme, host, port or _DEFAULT_PORTS[scheme], path)


def _next_hop(current: _Target, location: str) -> _Target:
    """The target a redirect from `current` to `location` (a Location header) points at.

    Raises:
        ImageRefused: the new URL is refused (see `_target`), or it drops https for http.
    """
    try:
        target = _target(urljoin(current.url, location.strip()))
    except ImageRefused as exc:
        raise ImageRefused(f"redirect refused: {exc}") from None
    if (current.scheme, target.scheme) == ("https", "http"):
        raise ImageRefused("redirect refused: from https down to http")
    return target


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS settings for https images: system CAs, host names checked (made once)."""
    return ssl.create_default_context()


def _dial(addresses: list[str], port: int, timeout_s: float) -> socket.socket:
    """A TCP connection to the first of `addresses` (all checked) that answers.

    Raises:
        ImageFault: none answered within `timeout_s` seconds each.
    """
    failure = "no address"
    # In the resolver's order, as socket.create_connection would, but only these.
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout_s)
        except TimeoutError:
            failure = f"timed out connecting after {timeout_s:g}s"
        except OSError as exc:
            failure = f"network error: {type(exc).__name__}"
    raise ImageFault(failure)


def _connect(target: _Target, timeout_s: float, allow_private: bool) -> socket.socket:
    """A connection to `target`, made only to the addresses the policy allowed.

    Raises:
        ImageRefused: the host resolves to an address the policy refuses.
        ImageFault: the host does not resolve (the DNS may answer later), or the
            connection or the TLS handshake failed or timed out.
    """
    try:
        answers = resolve(target.host, target.port)
    except TargetRefused as exc:
        raise ImageFault(f"host {target.host!r}: {exc}") from None
    try:
        # Every answer is checked, not only the first: the next lookup could pick another.
        pick_address(answers, allow_private)
    except TargetRefused as exc:
        raise ImageRefused(f"host {target.host!r}: {exc}") from None
    sock = _dial(answers, target.port, timeout_s)
    if target.scheme == "http":
        return sock
    try:
        # The certificate must be for the URL's host, not for the address we connect to.
        return _tls().wrap_socket(sock, server_hostname=target.host)
    except OSError as exc:  # ssl.SSLError and timeouts both are OSErrors
        sock.close()
        # e.g. "Hostname mismatch, certificate is not valid for 'x'." (no URL in it)
        detail = getattr(exc, "verify_message", None)
        raise ImageFault(f"TLS error: {type(exc).__name__}"
                         + (f": {detail}" if detail else "")) from None


def _get(target: _Target, timeout_s: float, allow_private: bool
         ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """One GET of `target` over a checked connection; the body is not read yet.

    Raises:
        ImageRefused: the target's address is refused.
        ImageFault: network error or timeout.
    """
    sock = _connect(target, timeout_s, allow_private)
    connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
    # Already connected to the checked address: http.client must not look the name up again.
    connection.sock = sock
    try:
        connection.putrequest("GET", target.path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", target.host_header)
        connection.putheader("Accept", ", ".join(CONTENT_TYPES))
        # identity: store exactly the served bytes, and make Content-Length mean them
        connection.putheader("Accept-Encoding", "identity")
        # Some CDNs turn away requests without one (requests used to send its own).
        connection.putheader("User-Agent", USER_AGENT)
        # One request per connection: the next image, or hop, is resolved and checked anew.
        connection.putheader("Connection", "close")
        connection.endheaders()
        return connection, connection.getresponse()
    except TimeoutError:
        connection.close()
        raise ImageFault(f"timed out after {timeout_s:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise ImageFault(f"network error: {type(exc).__name__}") from None


@contextlib.contextmanager
def _open(url: str, timeout_s: float, allow_private: bool
          ) -> Iterator[http.client.HTTPResponse]:
    """GET `url`, following at most MAX_REDIRECTS redirects, each hop checked anew.

    Yields:
        The final answer (not a redirect), its body unread; closed on exit.
    """
    target = _target(url)
    for _ in range(MAX_REDIRECTS + 1):
        connection, answer = _get(target, timeout_s, allow_private)
        try:
            location = answer.getheader("Location")
            if answer.status not in _REDIRECT_STATUSES or not location:
                yield answer
                return
        finally:
            answer.close()
            connection.close()
        target = _next_hop(target, location)
    raise ImageRefused(f"more than {MAX_REDIRECTS} redirects")


def _accept(answer: http.client.HTTPResponse, max_bytes: int) -> int | None:
    """Check an answer's status and length before reading its body.

    Returns:
        The declared Content-Length in bytes, or None.

    Raises:
        ImageFault: 408, 429 or 5xx.
        ImageRefused: any other status than 200, or a Content-Length over `max_bytes`.
    """
    status = answer.status
    if status >= 500 or status in _RETRY_STATUSES:
        raise ImageFault(f"HTTP {status}")
    if status in (404, 410):
        raise ImageRefused(f"HTTP {status}: gone (Kie deletes images after 14 days)")
    if status != 200:
        raise ImageRefused(f"HTTP {status}")
    declared: int | None = None
    with contextlib.suppress(ValueError):
        declared = int(answer.getheader("Content-Length") or "")
    # Refuse before writing anything when the server says it is too large.
    if declared is not None and declared > max_bytes:
        raise ImageRefused(f"{declared} bytes is over COVERS_IMAGE_MAX_BYTES ({max_bytes})")
    return declared


def _chunks(answer: http.client.HTTPResponse, deadline: float) -> Iterator[bytes]:
    """The body, as it arrives (up to CHUNK_BYTES per chunk).

    Raises:
        ImageFault: the network failed or timed out, or `deadline` (monotonic
            seconds) passed.
    """
    while True:
        try:
            # read1 returns what has arrived, so the deadline is checked between
            # small reads too, not only after a whole chunk has trickled in.
            chunk = answer.read1(CHUNK_BYTES)
        except TimeoutError:
            raise ImageFault("timed out while reading") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ImageFault(f"network error while reading: {type(exc).__name__}") from None
        if not chunk:
            return
        if time.monotonic() > deadline:
            raise ImageFault("download too slow: the run's time is up")
        yield chunk


def _kind(answer: http.client.HTTPResponse, chunks: Iterator[bytes],
          declared: int | None) -> tuple[bytes, str]:
    """Read the body's first bytes and tell what the file is.

    Returns:
        (the bytes read so far, at least SNIFF_BYTES unless the body is shorter;
        the media type).

    Raises:
        ImageFault: nothing came, or the body ended before its Content-Length.
        ImageRefused: the file is not PNG, JPEG or WebP, whatever it was served as.
    """
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    if not head:
        raise ImageFault("empty answer")
    content_type = sniff(head)
    if content_type is not None:
        return head, content_type
    if len(head) < SNIFF_BYTES and declared is not None and len(head) != declared:
        raise ImageFault(f"got {len(head)} of {declared} bytes")
    served = (answer.getheader("Content-Type") or "").split(";")[0].strip().lower()
    raise ImageRefused(f"content type: not a PNG, JPEG or WebP file by its first bytes "
                       f"(served as {served or '(no type)'!r})")


def _stream(chunks: Iterable[bytes], pending: Pending, max_bytes: int) -> tuple[str, int]:
    """Write `chunks` into `pending`; returns (sha256 hex digest, size in bytes).

    Raises:
        ImageRefused: more than `max_bytes` bytes.
        ImageFault: from reading `chunks` (see `_chunks`).
    """
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        # Counted too, since Content-Length may be absent or wrong.
        if size > max_bytes:
            raise ImageRefused(f"over COVERS_IMAGE_MAX_BYTES ({max_bytes} bytes)")
        digest.update(chunk)
        pending.handle.write(chunk)
    return digest.hexdigest(), size


def copy_one(url: str, store: ImageStore, folder: str, stem: str, *, max_bytes: int,
             timeout_s: float, deadline: float, allow_private: bool = False) -> StoredImage:
    """Download one image into `store` as ``folder/stem.<ext>``.

    Args:
        url: the image URL (http or https, without user info).
        store: where to put it.
        folder, stem: safe path segments (music task id; ``<job id>-<n>``).
        max_bytes: largest image accepted, bytes (COVERS_IMAGE_MAX_BYTES).
        timeout_s: seconds for the connection and for each read (KIE_HTTP_TIMEOUT).
        deadline: `time.monotonic()` value after which the download is abandoned
            (a retryable timeout), so a trickling server cannot outlive the run's lease.
        allow_private: let the image (and every redirect) come from loopback and
            private addresses (COVERS_ALLOW_PRIVATE_TARGETS; default False: public only).

    Raises:
        ImageRefused: final for this image (refused target or URL, 404/4xx, not a
            PNG/JPEG/WebP file, size, too many redirects).
        ImageFault: worth another try (network, DNS, timeout, 5xx, store error).
    """
    with _open(url, timeout_s, allow_private) as answer:
        declared = _accept(answer, max_bytes)
        chunks = _chunks(answer, deadline)
        head, content_type = _kind(answer, chunks, declared)
        try:
            pending = store.begin(folder, stem)
        except OSError as exc:
            raise ImageFault(f"store error: {type(exc).__name__}: {exc}") from None
        try:
            sha256, size = _stream(itertools.chain([head], chunks), pending, max_bytes)
            if declared is not None and size != declared:
                raise ImageFault(f"got {size} of {declared} bytes")
            location = store.commit(pending, folder, f"{stem}.{CONTENT_TYPES[content_type]}")
        except BaseException:
            store.discard(pending)  # never leave a half file behind
            raise
    return StoredImage(url, location, sha256, size, content_type)
