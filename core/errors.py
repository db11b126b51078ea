"""The error taxonomy: one root, branches by what the caller must do.

    KieCoversError                  root of everything kie-covers raises
    ├── SettingsError               a setting is missing or malformed (also a ValueError)
    ├── UnknownJob                  no such job (also a LookupError)
    ├── BadArgument                 a Python API argument out of range (also a ValueError)
    ├── StoreFull                   Redis refused a write: maxmemory reached (noeviction)
    ├── UndecodableEntry            a broker entry that is no JSON (quarantined, internal)
    ├── ImageError                  copying images to the image store
    │   ├── ImageRefused            this image never: 404, wrong type, too large
    │   ├── ImageFault              try later: network, 5xx, store error
    │   └── StoreUnusable           COVERS_IMAGE_STORE cannot be used at all
    └── CoverError                  a job's error; carries code, message, retry_after
        ├── PermanentError          never retry (retryable = False)
        │   ├── InvalidPayload      our own validation refused the input
        │   ├── Unauthorized        401: key missing, wrong, or IP not whitelisted
        │   ├── NotFound            404: music task or resource unknown
        │   ├── Rejected            422: Kie refused the parameters
        │   ├── AlreadyGenerated    400/409 with no existing cover id to track
        │   └── UnknownAnswer       a code nobody documented: kept, never success
        ├── TransientError          retry later (retryable = True)
        │   ├── RateLimited         429: slow down (retry_after when given)
        │   ├── Maintenance         455: pause (retry_after when given)
        │   └── UpstreamError       5xx, network faults, malformed answers
        ├── OutOfCredits            402: hold, check credits, resume
        │   └── DailyCapReached     433: the key's daily cap
        └── CoverFailed             Kie accepted but the cover did not come
            ├── GenerationFailed    successFlag 3 or a failure callback
            └── CoverTimedOut       not finished within KIE_POLL_TIMEOUT

`ExistingCover` (400/409 *with* the existing cover's task id) is not a failure:
the client returns it as a normal answer so the job tracks that cover.

Every error's ``args`` are its constructor arguments, all JSON-safe, so Celery
can store it in the result backend and `AsyncResult.get()` raises the same
class again. No error ever holds the API key or webhook key: messages come
from Kie's ``msg`` or from this module, never from request headers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar


class KieCoversError(Exception):
    """Root of every error kie-covers raises: catch this to catch them all."""


class SettingsError(KieCoversError, ValueError):
    """A setting is missing or malformed; the message names the variable."""


class BadArgument(KieCoversError, ValueError):
    """A Python API call got an argument it cannot work with (the message says which)."""


class StoreFull(KieCoversError):
    """Redis refused a write because it reached ``maxmemory`` (OOM under ``noeviction``).

    Nothing is lost: call again once Redis has room (`enqueue_cover` is idempotent per
    music task). Workers do not raise it: they pause and resume by themselves.
    """


class UndecodableEntry(KieCoversError, ValueError):
    """A broker queue entry that is no JSON text (raised inside the kombu guard, which
    quarantines the entry; never reaches a caller).

    Args:
        text: the entry as received (it may hold anything: never log it).
        detail: the decoder's message (names no content).
    """

    def __init__(self, text: str, detail: str) -> None:
        super().__init__(detail)  # not the text: str() and repr() never show it
        self.text = text
        self.detail = detail


class UnknownJob(KieCoversError, LookupError):
    """No job with this id is known (never enqueued, or its record expired)."""


class ImageError(KieCoversError):
    """Copying a job's images to the image store went wrong (see the subclasses)."""


class ImageRefused(ImageError):
    """A permanent failure for one image: 404, wrong content type, too large, bad URL."""


class ImageFault(ImageError):
    """A failure worth another try later: network, timeout, 5xx, store error."""


class StoreUnusable(ImageError):
    """COVERS_IMAGE_STORE cannot be used at all (fsspec missing, unknown protocol)."""


class CoverError(KieCoversError):
    """Root of every error about a cover job: what a job's record and result carry.

    Args:
        message: human-readable reason (Kie's ``msg`` where there is one).
        code: the API's answer code (body code first, else HTTP status), or None.
        retry_after: seconds the API asked us to wait, or None.
        detail: JSON-safe extra facts (e.g. per-field validation errors).
    """

    #: Stable name of the branch, stored in job records and failure lists.
    kind: ClassVar[str] = "error"
    #: Whether trying the same job again later can help.
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        code: int | None = None,
        retry_after: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code, retry_after, detail)
        self.message = message
        self.code = code
        self.retry_after = retry_after
        self.detail = detail or {}

    def __str__(self) -> str:
        code = f" (code {self.code})" if self.code is not None else ""
        wait = f", retry after {self.retry_after:g}s" if self.retry_after is not None else ""
        return f"{self.kind}{code}: {self.message}{wait}"

    def __repr__(self) -> str:
        # What Celery's task events (Flower, ``celery events``) show of a failed job.
        return (f"{type(self).__name__}(kind={self.kind!r}, code={self.code!r}, "
                f"message={self.message!r}, retryable={self.retryable!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.code, self.retry_after, self.detail))

    def masked(self, mask: Callable[[str], str]) -> CoverError:
        """This error with `mask` applied to its message (same class, code and wait)."""
        message = mask(self.message)
        if message == self.message:
            return self
        return type(self)(message, self.code, self.retry_after, self.detail)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for job records: code, kind, message, retryable."""
        out: dict[str, Any] = {
            "code": self.code,
            "kind": self.kind,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        if self.detail:
            out["detail"] = self.detail
        return out


class PermanentError(CoverError):
    """Trying again cannot help: fail the job at once."""

    kind = "permanent"
    retryable = False


class InvalidPayload(PermanentError):
    """The input failed validation; ``detail['fields']`` maps field -> messages."""

    kind = "invalid_payload"

    @property
    def fields(self) -> dict[str, list[str]]:
        """Per-field error messages, as marshmallow gives them."""
        return dict(self.detail.get("fields", {}))


class Unauthorized(PermanentError):
    """401: the key is missing, wrong, or the server's address is not whitelisted."""

    kind = "unauthorized"


class NotFound(PermanentError):
    """404: the music task (or another resource) does not exist."""

    kind = "not_found"


class Rejected(PermanentError):
    """422: Kie refused the request's parameters."""

    kind = "rejected"


class AlreadyGenerated(PermanentError):
    """400/409 without the existing cover's task id: nothing left to track."""

    kind = "already_generated"


class UnknownAnswer(PermanentError):
    """A code no table documents; its message is kept, it is never a success."""

    kind = "unknown_answer"


class TransientError(CoverError):
    """The same request can succeed later."""

    kind = "transient"
    retryable = True


class RateLimited(TransientError):
    """429: too many calls; ``retry_after`` when Kie said how long."""

    kind = "rate_limited"


class Maintenance(TransientError):
    """455: Kie is in maintenance."""

    kind = "maintenance"


class UpstreamError(TransientError):
    """5xx, resets, timeouts, HTML or malformed answers."""

    kind = "upstream"


class OutOfCredits(CoverError):
    """402: the account has no credits; jobs wait until credits return."""

    kind = "out_of_credits"
    retryable = True


class DailyCapReached(OutOfCredits):
    """433: the key's daily usage cap is reached."""

    kind = "daily_cap"


class CoverFailed(CoverError):
    """Kie accepted the job but produced no cover."""

    kind = "cover_failed"
    retryable = True


class GenerationFailed(CoverFailed):
    """Kie reports the cover generation failed (successFlag 3 or a failure callback)."""

    kind = "generation_failed"


class CoverTimedOut(CoverFailed):
    """The cover did not finish within KIE_POLL_TIMEOUT seconds."""

    kind = "timed_out"


#: Every error class by its `kind`, for rebuilding errors from stored records.
KINDS: dict[str, type[CoverError]] = {
    cls.kind: cls
    for cls in (
        CoverError, PermanentError, InvalidPayload, Unauthorized, NotFound, Rejected,
        AlreadyGenerated, UnknownAnswer, TransientError, RateLimited, Maintenance,
        UpstreamError, OutOfCredits, DailyCapReached, CoverFailed, GenerationFailed,
        CoverTimedOut,
    )
}


def from_dict(record: dict[str, Any]) -> CoverError:
    """Rebuild an error from `CoverError.to_dict` output."""
    cls = KINDS.get(str(record.get("kind")), CoverError)
    return cls(
        str(record.get("message", "")),
        record.get("code"),
        record.get("retry_after"),
        record.get("detail"),
    )
