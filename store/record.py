"""A job's record: the typed `Job`, and the one list of the fields its hash holds.

Each job is a Redis hash (`kie_covers.config.keys.job`). `Job` is its decoded,
typed form. `FIELDS` is the only list of what the hash holds: how each field is
stored, and under which name, if any, `get_cover` shows it. Everything that
builds, decodes, resets or shows a record goes through it; the Lua scripts only
name the fields a state change touches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from kie_covers.core.states import JobState, WaitReason

#: Stored form: what Redis holds for one field.
Stored = str


class Codec(Enum):
    """How a field is stored in the hash (every value is a string there)."""

    TEXT = "text"  #: plain text; empty means unset (None) for optional fields
    INT = "int"  #: a whole number; empty means 0
    TIME = "time"  #: unix seconds as ``repr(float)``; shown as ISO 8601 UTC
    JSON = "json"  #: JSON; empty means the field's default
    STATE = "state"  #: a `JobState` value
    REASON = "reason"  #: a `WaitReason` value; empty means None


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds")


def _meta(codec: Codec, shown_as: str | None = None) -> dict[str, Any]:
    return {"codec": codec, "shown_as": shown_as}


@dataclass
class Job:
    """One job's record, decoded from its hash.

    Times are unix seconds (floats); `to_dict` shows them as ISO 8601 UTC.
    """

    job_id: str = field(metadata=_meta(Codec.TEXT, "job_id"))
    #: The music task id Kie gave the song (the job's input).
    music_task_id: str = field(metadata=_meta(Codec.TEXT, "music_task_id"))
    callback_url: str = field(metadata=_meta(Codec.TEXT, "callback_url"))
    state: JobState = field(metadata=_meta(Codec.STATE, "state"))
    #: The Celery queue every run of the job goes to.
    queue: str = field(default="", metadata=_meta(Codec.TEXT))
    #: The rate limit's lane: ``interactive`` (first) or ``bulk``.
    priority: str = field(default="interactive", metadata=_meta(Codec.TEXT, "priority"))
    #: The app's user or organisation the job is for; None: the default tenant.
    tenant: str | None = field(default=None, metadata=_meta(Codec.TEXT, "tenant"))
    #: Kie's id of the cover task, once submitted.
    cover_task_id: str | None = field(default=None, metadata=_meta(Codec.TEXT, "cover_task_id"))
    images: list[str] = field(default_factory=list, metadata=_meta(Codec.JSON, "images"))
    #: `CoverError.to_dict` of a failed job.
    error: dict[str, Any] | None = field(default=None, metadata=_meta(Codec.JSON, "error"))
    #: Generate calls made.
    attempts: int = field(default=0, metadata=_meta(Codec.INT, "attempts"))
    #: record-info calls made.
    polls: int = field(default=0, metadata=_meta(Codec.INT, "polls"))
    #: Counted faults in a row (toward COVERS_MAX_ATTEMPTS).
    faults: int = field(default=0, metadata=_meta(Codec.INT))
    #: Waits in a row (the backoff exponent).
    retries: int = field(default=0, metadata=_meta(Codec.INT))
    wait_reason: WaitReason | None = field(default=None,
                                           metadata=_meta(Codec.REASON, "waiting_for"))
    created_at: float | None = field(default=None, metadata=_meta(Codec.TIME, "created_at"))
    updated_at: float | None = field(default=None, metadata=_meta(Codec.TIME, "updated_at"))
    submitted_at: float | None = field(default=None,
                                       metadata=_meta(Codec.TIME, "submitted_at"))
    finished_at: float | None = field(default=None, metadata=_meta(Codec.TIME, "finished_at"))
    #: When the job began waiting for credits (402/433).
    hold_since: float | None = field(default=None, metadata=_meta(Codec.TIME))
    first_failed_at: float | None = field(default=None,
                                          metadata=_meta(Codec.TIME, "first_failed_at"))
    last_failed_at: float | None = field(default=None,
                                         metadata=_meta(Codec.TIME, "last_failed_at"))
    #: Times a failed job was queued again.
    retry_rounds: int = field(default=0, metadata=_meta(Codec.INT, "retry_rounds"))
    notified_at: float | None = field(default=None, metadata=_meta(Codec.TIME, "notified_at"))
    #: Why the app's notice was given up.
    notice_error: str | None = field(default=None, metadata=_meta(Codec.TEXT, "notice_error"))
    notice_attempts: int = field(default=0, metadata=_meta(Codec.INT))
    #: Copies kept in COVERS_IMAGE_STORE, in image order.
    stored_images: list[dict[str, Any]] = field(default_factory=list,
                                                metadata=_meta(Codec.JSON, "stored_images"))
    #: Why copying to the image store gave up or refused images.
    images_error: str | None = field(default=None, metadata=_meta(Codec.TEXT, "images_error"))
    #: Image URL -> why it is never copied (404, wrong type, too large).
    images_refused: dict[str, str] = field(default_factory=dict, metadata=_meta(Codec.JSON))
    #: Copy runs that hit a retryable fault.
    images_attempts: int = field(default=0, metadata=_meta(Codec.INT))
    #: Not stored: True on the record `JobStore.finish` returns when it took the
    #: notice's lock for the caller.
    notice_locked: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def new(cls, job_id: str, music_task_id: str, callback_url: str, queue: str,
            now: float, priority: str = "interactive", tenant: str | None = None) -> Job:
        """A queued job's first record (priority ``interactive``, the default tenant,
        unless given)."""
        return cls(job_id=job_id, music_task_id=music_task_id, callback_url=callback_url,
                   state=JobState.QUEUED, queue=queue, priority=priority, tenant=tenant,
                   created_at=now, updated_at=now)

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> Job:
        """Decode a job hash; fields missing from it take their defaults."""
        values: dict[str, Any] = {}
        for spec in FIELDS:
            if spec.name in raw:
                values[spec.name] = spec.decode(raw[spec.name])
        values.setdefault("music_task_id", "")
        values.setdefault("callback_url", "")
        values.setdefault("state", JobState.QUEUED)
        return cls(**values)

    def to_hash(self) -> dict[str, Stored]:
        """The stored fields, encoded; those at their default are left out (a missing
        field decodes to its default), except the four every record has."""
        out: dict[str, Stored] = {}
        for spec in FIELDS:
            value = getattr(self, spec.name)
            if spec.name in ALWAYS_STORED or value != spec.default():
                out[spec.name] = spec.encode(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready view `get_cover` returns (`SHOWN` keys); times ISO 8601 UTC."""
        return {spec.shown_as: spec.show(getattr(self, spec.name))
                for spec in FIELDS if spec.shown_as is not None}

    def log_fields(self, step: str) -> dict[str, Any]:
        """``extra=`` for a log line about one step: job id, music task id, step."""
        return {"job_id": self.job_id, "music_task_id": self.music_task_id, "step": step}


@dataclass(frozen=True)
class FieldSpec:
    """One stored field of `Job`: its name, codec and public name (`Job.to_dict`)."""

    name: str
    codec: Codec
    shown_as: str | None
    default: Callable[[], Any]

    def decode(self, value: Stored) -> Any:
        """The typed value of a stored string."""
        if self.codec is Codec.INT:
            return int(value or 0)
        if self.codec is Codec.TIME:
            return float(value) if value else None
        if self.codec is Codec.JSON:
            return json.loads(value) if value else self.default()
        if self.codec is Codec.STATE:
            return JobState(value or JobState.QUEUED)
        if self.codec is Codec.REASON:
            return WaitReason.parse(value)
        return value if value or self.default() is not None else None  # "" = unset

    def encode(self, value: Any) -> Stored:
        """The stored string of a typed value."""
        if value is None:
            return ""
        if self.codec is Codec.TIME:
            return repr(float(value))
        if self.codec is Codec.JSON:
            return json.dumps(value) if value else ""
        return str(value.value if isinstance(value, Enum) else value)

    def show(self, value: Any) -> Any:
        """The JSON-ready value `get_cover` shows."""
        if self.codec is Codec.TIME:
            return _iso(value)
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, list):
            return [dict(v) if isinstance(v, dict) else v for v in value]
        return value


def _spec(f: dataclasses.Field[Any]) -> FieldSpec:
    if f.default_factory is not dataclasses.MISSING:
        default: Callable[[], Any] = f.default_factory
    else:
        # A required text field (no default) decodes "" as "", not as None.
        value = "" if f.default is dataclasses.MISSING else f.default
        default = lambda: value  # noqa: E731 - a constant default
    return FieldSpec(f.name, f.metadata["codec"], f.metadata["shown_as"], default)


#: The job hash's fields, in order: the one list (see the module docstring).
FIELDS: tuple[FieldSpec, ...] = tuple(_spec(f) for f in dataclasses.fields(Job)
                                      if "codec" in f.metadata)
#: Fields every record holds, even when empty.
ALWAYS_STORED = frozenset({"job_id", "music_task_id", "callback_url", "state"})
#: Field name -> its spec.
FIELD_BY_NAME: dict[str, FieldSpec] = {spec.name: spec for spec in FIELDS}
#: The keys of `get_cover`'s dict, in order.
SHOWN: tuple[str, ...] = tuple(spec.shown_as for spec in FIELDS if spec.shown_as)

#: What a retry of a failed job resets (name -> stored value); everything a run,
#: an ending or a notice wrote. `retry_rounds` is counted up instead.
RETRY_RESETS: dict[str, Stored] = {
    "state": JobState.QUEUED.value, "error": "", "wait_reason": "", "faults": "0",
    "retries": "0", "cover_task_id": "", "images": "", "finished_at": "", "hold_since": "",
    "submitted_at": "", "notified_at": "", "notice_error": "", "notice_attempts": "0",
}


def encode_fields(values: Mapping[str, Any]) -> dict[str, Stored]:
    """Encode some fields of a record (names must be in `FIELDS`)."""
    return {name: FIELD_BY_NAME[name].encode(value) for name, value in values.items()}


def from_flat(flat: list[str] | None) -> Job | None:
    """A job from a script's HGETALL reply (a flat name, value list), or None."""
    if not flat:
        return None
    raw = dict(zip(flat[::2], flat[1::2], strict=True))
    return Job.from_hash(raw) if raw.get("job_id") else None


def flat(fields: Mapping[str, Stored]) -> list[str]:
    """``{name: value}`` as the flat ``name, value, ...`` list HSET and scripts take."""
    return [item for pair in fields.items() for item in pair]
