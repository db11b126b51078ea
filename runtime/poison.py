"""Poison broker entries: what is wrong with one, and moving it to the quarantine.

A poison entry is one no worker can decode. Two places meet them: the kombu guard
(`kie_covers.runtime.kombu_guard`: text that is no JSON, JSON that is no kombu
envelope, a body its ``body_encoding`` cannot decode) and the worker's Celery consumer
(`kie_covers.worker.quarantine_consumer`: a content type the workers refuse, a body
that is not what its content type says, a message that is no task). Both call
`quarantine`, which stores the entry (`kie_covers.store.quarantine`), logs it once
as an error (its size and reason, never its content: it could hold anything), and
counts it in ``covers_quarantined_total{reason}``. The worker then takes the next entry.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from kombu.transport import virtual

from kie_covers.runtime import metrics
from kie_covers.runtime.connections import get_redis
from kie_covers.store.quarantine import PoisonEntry, Quarantine

log = logging.getLogger("covers.poison")

#: Reasons (the metric's label values, bounded): the entry is not JSON text.
NOT_JSON = "not_json"
#: JSON, but not a kombu envelope (an object with ``properties.delivery_tag``).
NOT_AN_ENVELOPE = "not_an_envelope"
#: The envelope's body does not decode with its ``body_encoding`` (e.g. bad base64).
BAD_BODY_ENCODING = "bad_body_encoding"
#: A content type (or encoding) the workers do not accept (they accept JSON only).
CONTENT_TYPE = "content_type"
#: The body is not what its content type says (e.g. "application/json" but no JSON).
BAD_BODY = "bad_body"
#: A task message Celery refuses (e.g. malformed eta, expires or arguments).
INVALID_TASK = "invalid_task"
#: A well-formed message that is no task message (no ``task`` header).
NOT_A_TASK = "not_a_task"


def envelope_problem(message: Any) -> tuple[str, str] | None:
    """What keeps kombu from making a message of `message` (a decoded queue entry), as
    (reason, detail), or None when it is a usable envelope.

    Mirrors what ``kombu.transport.virtual.Message`` reads: ``properties`` (an object
    with a ``delivery_tag``), ``headers`` (an object, if given) and the body, decoded
    with ``properties.body_encoding``.
    """
    if not isinstance(message, dict):
        return NOT_AN_ENVELOPE, f"a JSON {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return NOT_AN_ENVELOPE, "no properties object"
    if "delivery_tag" not in properties:
        return NOT_AN_ENVELOPE, "no properties.delivery_tag"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return NOT_AN_ENVELOPE, "properties.delivery_info is not an object"
    body, encoding = message.get("body"), properties.get("body_encoding")
    if body and encoding:
        codec: Any = virtual.Channel.codecs.get(encoding)
        if codec is None:
            return BAD_BODY_ENCODING, f"unknown body_encoding {str(encoding)[:40]!r}"
        try:
            codec.decode(body)
        except Exception as bad:  # whatever the codec raises, the body is bad
            return BAD_BODY_ENCODING, f"{type(bad).__name__}: {bad}"
    return None


def quarantine(raw: bytes | str, reason: str, queue: str, detail: str) -> None:
    """Move one poison entry to the quarantine, log it once, count it. Never raises.

    Args:
        raw: the entry as it was (text is stored as UTF-8).
        reason: one of this module's reasons.
        queue: the queue it came from ("" when unknown).
        detail: the decoder's message (it names no content of the entry).
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    entry = PoisonEntry(data, reason, queue, detail, int(time.time() * 1000))
    try:
        Quarantine(get_redis()).add(entry)
    except redis.RedisError as failed:
        log.error("poison entry from queue %r (%s, %d bytes) could not be quarantined and "
                  "is dropped: %s", queue, reason, len(data), failed)
        return
    log.error("poison entry from queue %r quarantined: %s (%d bytes): %s; the worker goes "
              "on (see `covers quarantine`)", queue, reason, len(data), detail[:200])
    metrics.inc("quarantined_total", reason=reason)
