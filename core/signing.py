"""Kie's webhook signature, used both ways (checking Kie's callbacks, signing our
notices), and the per-job token of our own callback URL.

``X-Webhook-Signature`` = base64(HMAC-SHA256(key, ``f"{data_task_id}.{timestamp}"``)),
with ``X-Webhook-Timestamp`` the unix time in whole seconds. ``data_task_id`` is the
body's ``data.taskId``: Kie's cover task id (in our notices, the job id when Kie
never gave one).

The callback URL handed to Kie for a job is ``COVERS_CALLBACK_URL`` plus
``?job=<job id>&token=<token>``, token = base64url(HMAC-SHA256(secret, job id)) with
no padding (`callback_token`); the web endpoint refuses a callback whose token does
not match the job it names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kie_covers.core.secret import Secret


def signature(key: Secret, data_task_id: str, timestamp: str) -> str:
    """Kie's callback signature: base64(HMAC-SHA256(key, f"{data_task_id}.{timestamp}"))."""
    digest = hmac.new(key.reveal().encode(), f"{data_task_id}.{timestamp}".encode(),
                      hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signature_matches(key: Secret, data_task_id: str, timestamp: str, given: str) -> bool:
    """True if `given` is the signature of `data_task_id` and `timestamp` (constant time)."""
    expected = signature(key, data_task_id, timestamp)
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


#: Query parameters of our callback URL that name the job and carry its token.
JOB_PARAM = "job"
TOKEN_PARAM = "token"


def callback_token(secret: Secret, job_id: str) -> str:
    """The capability a job's callback URL carries: base64url(HMAC-SHA256(secret,
    job_id)), without padding (43 characters). Unguessable without the secret, so a
    callback that carries it was sent to the URL we handed to Kie for that job."""
    digest = hmac.new(secret.reveal().encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def callback_token_matches(secrets: Sequence[Secret], job_id: str, given: str) -> bool:
    """True if `given` is `job_id`'s token under any of `secrets` (the current one and,
    during a rotation, the previous one). Each comparison takes constant time, and all
    are made, so the time taken says nothing about which one matched."""
    given_bytes = given.encode("utf-8", "replace")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(callback_token(secret, job_id).encode(), given_bytes)
    return matched


def job_callback_url(base_url: str, job_id: str, token: str) -> str:
    """`base_url` (COVERS_CALLBACK_URL) with ``job=<job_id>&token=<token>`` added to its
    query string (any query it already has is kept)."""
    parts = urlsplit(base_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query = [(name, value) for name, value in query if name not in (JOB_PARAM, TOKEN_PARAM)]
    query += [(JOB_PARAM, job_id), (TOKEN_PARAM, token)]
    return urlunsplit(parts._replace(query=urlencode(query)))
