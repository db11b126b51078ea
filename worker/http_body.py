"""Reading a request body safely: size caps, UTF-8, JSON nesting depth.

Shared by the callback endpoint (`kie_covers.worker.web`) and the producer API
(`kie_covers.worker.http_api`), so both refuse the same way: a declared
``Content-Length`` over the cap is refused before any of the body is read (413), a
chunked body is read to at most the cap plus one byte (413 over it), a body that is
not UTF-8 JSON, or nests arrays and objects deeper than the depth limit, is refused
(400) without ``json.loads`` ever recursing into it.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from kie_covers.core import errors

# JSON strings (possessive, so never backtracking), and brackets outside them.
_STRINGS = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")

Environ = dict[str, Any]


class Refused(errors.KieCoversError):
    """A request an endpoint answers with an error status.

    Args:
        status: the HTTP status line, e.g. ``"413 Content Too Large"``.
        message: what is wrong, for the client (never holds a secret).
        fields: field -> messages, when particular fields are at fault.
    """

    def __init__(self, status: str, message: str, fields: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields

    @property
    def code(self) -> int:
        """The status as a number (413 for ``"413 Content Too Large"``)."""
        return int(self.status.split(" ", 1)[0])


def too_deep(text: str, max_depth: int) -> bool:
    """True if JSON `text` opens more than `max_depth` arrays or objects inside each
    other. Brackets inside strings do not count. A loop over the brackets, no
    recursion; linear in the text's length."""
    depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def declared_length(environ: Environ, cap: int) -> int | None:
    """The body's declared length in bytes (None: chunked or absent).

    Raises:
        Refused: 400 for a malformed ``Content-Length``, 413 over `cap` bytes (before
            any of the body is read).
    """
    raw_length = environ.get("CONTENT_LENGTH") or ""
    if not raw_length:
        return None
    try:
        length = int(raw_length)
    except ValueError:
        raise Refused("400 Bad Request", "bad Content-Length") from None
    if length < 0:
        raise Refused("400 Bad Request", "bad Content-Length")
    if length > cap:
        raise Refused("413 Content Too Large", f"body over {cap} bytes")
    return length


def read_body(environ: Environ, length: int | None, cap: int) -> bytes:
    """The body: `length` bytes, or, chunked (`length` None), at most `cap` + 1 bytes.

    Raises:
        Refused: 413 when the body is over `cap` bytes.
    """
    stream = environ["wsgi.input"]
    body: bytes = stream.read(cap + 1 if length is None else length)
    if len(body) > cap:
        raise Refused("413 Content Too Large", f"body over {cap} bytes")
    return body


def decode_json(body: bytes, max_depth: int) -> Any:
    """The body's JSON value.

    Raises:
        Refused: 400 when the body is not UTF-8 JSON, or nests arrays and objects more
            than `max_depth` levels deep (checked first, without recursing).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("400 Bad Request", "body is not UTF-8 JSON") from None
    # json.loads recurses once per level: check the depth first, without recursing.
    if too_deep(text, max_depth):
        raise Refused("400 Bad Request", f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise Refused("400 Bad Request", "body is not UTF-8 JSON") from None


def status_line(status: int) -> str:
    """The WSGI status line of `status` (``"413 Content Too Large"``, RFC 9110's name,
    where Python's `HTTPStatus` still says "Request Entity Too Large")."""
    return f"{status} {'Content Too Large' if status == 413 else HTTPStatus(status).phrase}"
