"""Kie's webhook signature, used both ways: checking Kie's callbacks, signing our notices.

``X-Webhook-Signature`` = base64(HMAC-SHA256(key, ``f"{task_id}.{timestamp}"``)), with
``X-Webhook-Timestamp`` the unix time in whole seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from kie_covers.core.secret import Secret


def signature(key: Secret, task_id: str, timestamp: str) -> str:
    """Kie's callback signature: base64(HMAC-SHA256(key, f"{task_id}.{timestamp}"))."""
    digest = hmac.new(key.reveal().encode(), f"{task_id}.{timestamp}".encode(),
                      hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signature_matches(key: Secret, task_id: str, timestamp: str, given: str) -> bool:
    """True if `given` is the signature of `task_id` and `timestamp` (constant time)."""
    expected = signature(key, task_id, timestamp)
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
