"""Where image copies go: a local directory or any fsspec filesystem.

COVERS_IMAGE_STORE is a local directory (a plain path; directories are made as
needed) or any fsspec URL (``s3://bucket/covers``, ``file:///srv/covers``, ...;
fsspec is the optional extra ``kie-covers[images]``, plus the backend's own
package, e.g. s3fs). `open_store` turns the setting into an `ImageStore`.

Every copy is written under a hidden temporary name beside its final one
(`ImageStore.begin`) and moved into place only once complete (`ImageStore.commit`),
so the store never holds half an image under an image's name.

Store values may carry credentials (``s3://key:secret@bucket``): `redact` and
`scrub` keep them out of logs, record fields and locations.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit, urlunsplit

from kie_covers.core.errors import StoreUnusable

#: What to install when the store is a URL and fsspec is missing.
FSSPEC_HINT = "pip install 'kie-covers[images]'"
#: A value with a URL scheme (``s3://``, ``file://``) or an fsspec chain
#: (``simplecache::s3://``); a one-letter scheme would be a Windows drive, so 2+.
_URL_VALUE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:(//|:)")
#: Characters kept in object-name parts; anything else (``/``, ``:``...) becomes ``_``
#: so a job id from a raw message can never climb out of the store.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def redact(value: str) -> str:
    """`value` without user info, query or fragment in any URL part (safe to log and keep).

    Each ``::``-separated part of an fsspec chain is redacted; parts that are not URLs
    with a host (plain paths) are returned unchanged.
    """
    parts = []
    for part in value.split("::"):
        split = urlsplit(part)
        if not split.scheme or not split.netloc:
            parts.append(part)
            continue
        host = split.netloc.rpartition("@")[2]
        parts.append(urlunsplit((split.scheme, host, split.path, "", "")))
    return "::".join(parts)


def scrub(message: str, raw: str) -> str:
    """`message` with the raw store value `raw` redacted and any password in it ``***``.

    For error texts that may quote the store value (fsspec backends do), before they
    are logged or kept in a record.
    """
    message = message.replace(raw, redact(raw))
    for part in raw.split("::"):
        with contextlib.suppress(ValueError):
            password = urlsplit(part).password
            if password:
                message = message.replace(password, "***")
    return message


def safe_part(value: str) -> str:
    """`value` usable as one path segment: only ``A-Za-z0-9_.-``, never leading ``.``.

    Any other character becomes ``_``; an empty value becomes ``_``.
    """
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
    """A directory on this machine.

    Args:
        root: the directory; ``~`` is expanded, and a relative path is relative to the
            worker's working directory. Made (with its parents) as copies need it.
    """

    def __init__(self, root: str) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(root)))

    def begin(self, folder: str, stem: str) -> _LocalPending:
        """Open ``root/folder/.<stem>.<random>.part`` for writing (made exclusively)."""
        directory = self.root / folder
        directory.mkdir(parents=True, exist_ok=True)
        # We hold the job's copy lock, so any temp file of this image is a dead run's.
        for stale in directory.glob(f".{stem}.*.part"):
            stale.unlink(missing_ok=True)
        path = directory / _temp_name(stem)
        # "x": never write into a file another run might hold; closed by commit/discard.
        return _LocalPending(open(path, "xb"), path)

    def commit(self, pending: Pending, folder: str, name: str) -> str:
        """Flush to disk and rename into place; returns the absolute path."""
        assert isinstance(pending, _LocalPending)
        pending.handle.flush()
        os.fsync(pending.handle.fileno())  # the rename must never expose unwritten bytes
        pending.handle.close()
        final = self.root / folder / name
        os.replace(pending.path, final)  # atomic on one filesystem: whole file or none
        return str(final)

    def discard(self, pending: Pending) -> None:
        """Close and delete the temporary file, ignoring errors."""
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
    """Any fsspec filesystem, from a URL such as ``s3://bucket/covers``.

    Args:
        url: the store URL (credentials in it are never shown: see `display`).

    Raises:
        StoreUnusable: fsspec is not installed, or the URL's protocol is unknown or
            its backend package missing.
    """

    def __init__(self, url: str) -> None:
        #: The URL without credentials, query or trailing ``/``: the start of locations.
        self.display = redact(url).rstrip("/")
        try:
            import fsspec  # noqa: PLC0415 - optional: only stores given as URLs need it
        except ImportError:
            raise StoreUnusable(
                f"COVERS_IMAGE_STORE is a URL ({self.display}), which needs fsspec: "
                f"{FSSPEC_HINT}") from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:  # unknown protocol, backend not installed
            raise StoreUnusable(
                f"COVERS_IMAGE_STORE {self.display} cannot be opened: "
                f"{scrub(str(exc), url)}") from None
        self.root = str(root).rstrip("/")

    def begin(self, folder: str, stem: str) -> _FsspecPending:
        """Open ``root/folder/.<stem>.<random>.part`` for writing."""
        directory = f"{self.root}/{folder}"
        self.fs.makedirs(directory, exist_ok=True)
        with contextlib.suppress(Exception):  # a leftover costs space, not correctness
            for stale in self.fs.glob(f"{directory}/.{stem}.*.part"):
                self.fs.rm(stale)
        path = f"{directory}/{_temp_name(stem)}"
        return _FsspecPending(self.fs.open(path, "wb"), path)

    def commit(self, pending: Pending, folder: str, name: str) -> str:
        """Close (object stores upload then) and move into place; returns
        ``<display>/<folder>/<name>``."""
        assert isinstance(pending, _FsspecPending)
        pending.handle.close()  # object stores upload on close: complete or absent
        self.fs.mv(pending.path, f"{self.root}/{folder}/{name}")
        return f"{self.display}/{folder}/{name}"

    def discard(self, pending: Pending) -> None:
        """Close and delete the temporary object, ignoring errors."""
        assert isinstance(pending, _FsspecPending)
        with contextlib.suppress(Exception):
            pending.handle.close()
        with contextlib.suppress(Exception):
            if self.fs.exists(pending.path):
                self.fs.rm(pending.path)


def is_url(value: str) -> bool:
    """True when COVERS_IMAGE_STORE names an fsspec URL rather than a local path."""
    return bool(_URL_VALUE.match(value.strip()))


def _protocols(value: str) -> list[str]:
    """The fsspec protocols a store URL uses: one per part of a ``::`` chain
    (``simplecache::s3://b`` -> simplecache, s3)."""
    found = []
    for part in value.split("::"):
        protocol = part.split("://", 1)[0] if "://" in part else part
        if protocol:
            found.append(protocol.lower())
    return found


def _install_hint(protocol: str, error: str) -> str:
    """What to ``pip install`` for `protocol`: the packages fsspec's message quotes
    (``requires "aiohttp"``), else the package its implementation lives in (s3fs)."""
    quoted = sorted(set(re.findall(r'"([A-Za-z0-9_.-]+)"', error)))
    if quoted:
        return "pip install " + " ".join(quoted)
    from fsspec.registry import (  # noqa: PLC0415 - optional: only URL stores need it
        known_implementations,
    )

    known = known_implementations.get(protocol, {})
    package = str(known.get("class", "")).split(".", 1)[0]
    return f"pip install {package}" if package and package != "fsspec" else ""


def check_store(value: str) -> None:
    """Refuse, at start-up, a COVERS_IMAGE_STORE that no copy could use: a URL when
    fsspec is not installed, or whose protocol is unknown or whose backend package
    is missing. Imports each backend; opens no connection. A local path passes.

    Raises:
        StoreUnusable: the message names the package to install.
    """
    value = value.strip()
    if not is_url(value):
        return
    display = redact(value)
    try:
        import fsspec  # noqa: PLC0415 - optional: only stores given as URLs need it
    except ImportError:
        raise StoreUnusable(
            f"COVERS_IMAGE_STORE is a URL ({display}), which needs fsspec: {FSSPEC_HINT}, "
            f"plus the backend of its protocol (e.g. s3fs for s3://)") from None
    for protocol in _protocols(value):
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as exc:
            hint = _install_hint(protocol, str(exc))
            raise StoreUnusable(
                f"COVERS_IMAGE_STORE {display} needs the fsspec backend for {protocol}://, "
                f"which is not installed: {hint or exc}"
                + (f" ({exc})" if hint else "")) from None
        except ValueError:
            raise StoreUnusable(
                f"COVERS_IMAGE_STORE {display}: fsspec knows no protocol {protocol!r}"
            ) from None


def open_store(value: str) -> ImageStore:
    """The store COVERS_IMAGE_STORE names (surrounding spaces ignored).

    Raises:
        StoreUnusable: it is a URL that cannot be used (see `FsspecStore`).
    """
    value = value.strip()
    return FsspecStore(value) if is_url(value) else LocalStore(value)
