"""Kie's webhook signature, used both ways: checking Kie's callbacks, signing our notices.

``X-Webhook-Signature`` = base64(HMAC-SHA256(key, ``f"{data_task_id}.{timestamp}"``)),
with ``X-Webhook-Timestamp`` the unix time in whole seconds. ``data_task_id`` is the
body's ``data.taskId``: Kie's cover task id (in our notices, the job id when Kie
never gave one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

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
