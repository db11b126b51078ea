"""One cover task: how it progresses over time, where its pictures are, how it is announced."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .style import Style

#: Kie's ``successFlag`` values (the record-info schema): 0 pending, 1 success,
#: 2 generating (not a failure), 3 generation failed.
FLAG_PENDING = 0
FLAG_SUCCESS = 1
FLAG_GENERATING = 2
FLAG_FAILED = 3

#: record-info ``status`` words, as Kie's docs list them.
STATUS_PENDING = "PENDING"
STATUS_SUCCESS = "SUCCESS"
STATUS_CREATE_TASK_FAILED = "CREATE_TASK_FAILED"
STATUS_GENERATE_COVER_FAILED = "GENERATE_COVER_FAILED"
#: Every ``status`` the stand-in sends; the docs list no word for
#: "generating", so successFlag 2 still reads ``PENDING``.
STATUSES: tuple[str, ...] = (
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_CREATE_TASK_FAILED,
    STATUS_GENERATE_COVER_FAILED,
)

#: Kie usually makes two pictures per cover.
IMAGES_PER_COVER = 2
#: Music task ids starting with this are accepted but their cover fails
#: (``GENERATE_COVER_FAILED``, callback code 501 unless the id names one).
FAILING_MUSIC_PREFIX = "genfail"
#: Music task ids starting with this are accepted but their cover task
#: fails to be created (``CREATE_TASK_FAILED``, callback code 500 unless the
#: id names one).
CREATE_FAILING_MUSIC_PREFIX = "createfail"
#: A failing id may name its callback code right after the prefix, three
#: digits ended by ``-`` or by the end of the id: ``genfail531-x``,
#: ``createfail408``. ``genfail`` + a uuid hex never matches (no ``-``).
_FAILURE_ID = re.compile(r"^(genfail|createfail)(?:(\d{3})(?:-|\Z))?")
#: The failure codes of Kie's cover callbacks and their messages (Kie's docs).
CALLBACK_FAILURES: dict[int, str] = {
    400: "Validation error - request parameters invalid",
    408: "Rate limited - timeout",
    500: "Server error - unexpected error occurred while processing request",
    501: "Cover generation failed",
    531: (
        "Server error - Sorry, generation failed due to an issue. "
        "Your credits have been refunded. Please try again"
    ),
}
#: Callback code whose failure refunds the cover's credits (Kie's docs).
REFUNDING_CALLBACK_CODE = 531

#: How a finished cover is announced: ``"send"`` once, ``"drop"`` never,
#: ``"duplicate"`` twice, ``"delay"`` once after an extra wait.
CALLBACK_MODES: frozenset[str] = frozenset({"send", "drop", "duplicate", "delay"})


@dataclass(frozen=True)
class Failure:
    """How a failing cover fails.

    Attributes:
        status: record-info ``status`` once failed (``CREATE_TASK_FAILED`` or
            ``GENERATE_COVER_FAILED``).
        callback_code: the failure callback's ``code``.
        message: record-info ``errorMessage`` and the callback's ``msg``.
    """

    status: str
    callback_code: int
    message: str


def failure_for(music_id: str) -> Failure | None:
    """How a cover for ``music_id`` fails, from its prefix; None when it succeeds.

    ``genfail…`` fails generating (callback 501), ``createfail…`` fails
    creating the task (callback 500); three digits and ``-`` (or the end)
    right after the prefix choose the callback code instead, e.g.
    ``genfail531-abc``.
    """
    match = _FAILURE_ID.match(music_id)
    if match is None:
        return None
    creating = match.group(1) == CREATE_FAILING_MUSIC_PREFIX
    default_code = 500 if creating else 501
    code = int(match.group(2)) if match.group(2) else default_code
    status = STATUS_CREATE_TASK_FAILED if creating else STATUS_GENERATE_COVER_FAILED
    message = CALLBACK_FAILURES.get(code, f"cover generation failed (code {code})")
    return Failure(status, code, message)


@dataclass
class Cover:
    """One cover task. Progress is computed from the timestamps on demand.

    Nothing changes a cover once accepted, so it may be read without a lock.
    """

    cover_id: str
    music_id: str
    callback_url: str
    create_ms: int  # wall clock, ms since the epoch, as Kie reports it
    created_mono: float  # time.monotonic() at accept, for progress
    duration_s: float  # cover_seconds when accepted, so later changes don't move it
    failure: Failure | None  # how it fails (see failure_for), None = it succeeds
    # The callback mode when accepted: a later set_callback_mode() applies to
    # later generations only, so tests can set it without racing covers.
    callback_mode: str = "send"
    callback_delay_s: float = 0.0

    @property
    def fails(self) -> bool:
        """True when this cover ends in failure."""
        return self.failure is not None

    @property
    def complete_ms(self) -> int:
        """When it ends (or ended), ms since the epoch: accept time + duration."""
        return self.create_ms + round(self.duration_s * 1000)

    def status(self, flag: int) -> str:
        """Kie's record-info ``status`` word for successFlag ``flag`` (see ``STATUSES``)."""
        if flag == FLAG_SUCCESS:
            return STATUS_SUCCESS
        if flag == FLAG_FAILED and self.failure is not None:
            return self.failure.status
        return STATUS_PENDING

    def flag(self, now_mono: float) -> int:
        """Kie's successFlag at ``now_mono`` (``time.monotonic()`` seconds).

        ``FLAG_PENDING`` for the first half of ``duration_s``, then
        ``FLAG_GENERATING``, then ``FLAG_SUCCESS`` or ``FLAG_FAILED``.
        """
        elapsed = now_mono - self.created_mono
        if elapsed >= self.duration_s:
            return FLAG_FAILED if self.fails else FLAG_SUCCESS
        if elapsed >= self.duration_s / 2:
            return FLAG_GENERATING
        return FLAG_PENDING


def image_urls(base_url: str, cover_id: str) -> list[str]:
    """Absolute URLs of a cover's ``IMAGES_PER_COVER`` pictures under ``base_url``."""
    return [f"{base_url}/files/{cover_id}/{n}.png" for n in range(IMAGES_PER_COVER)]


def format_time(epoch_ms: int, style: Style) -> str | int:
    """A record-info time field in ``style.time_format``.

    ``"iso"``: ISO-8601 UTC with milliseconds, ``"2025-01-15T10:33:01.000Z"``
    (Kie's published examples); ``"epoch-ms"``: the integer unchanged.
    """
    if style.time_format == "epoch-ms":
        return epoch_ms
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_info_data(cover: Cover, flag: int, base_url: str, style: Style) -> dict[str, Any]:
    """record-info's ``data`` for ``cover`` at successFlag ``flag``, shaped by ``style``.

    Documented shape: ``errorMessage`` ``""`` unless failed; ``response`` an
    object, ``{"images": [...]}`` on success and ``{}`` before; ``errorCode``
    200 on success and 500 on failure; ``completeTime`` once ended;
    ``errorCode`` and ``completeTime`` left out before. ``unset_fields =
    "null"`` sends ``null`` for each unset field instead.
    """
    nulls = style.unset_fields == "null"
    finished = flag in (FLAG_SUCCESS, FLAG_FAILED)
    data: dict[str, Any] = {
        "taskId": cover.cover_id,
        "parentTaskId": cover.music_id,
        "callbackUrl": cover.callback_url,
        "createTime": format_time(cover.create_ms, style),
    }
    if finished:
        data["completeTime"] = format_time(cover.complete_ms, style)
    elif nulls:
        data["completeTime"] = None
    if flag == FLAG_SUCCESS:
        data["response"] = {"images": image_urls(base_url, cover.cover_id)}
    else:
        data["response"] = None if nulls else {}
    data["successFlag"] = flag
    # Kie's docs: errorCode 200 on success, 500 with a message on failure.
    if finished:
        data["errorCode"] = 500 if flag == FLAG_FAILED else 200
    elif nulls:
        data["errorCode"] = None
    failure = cover.failure if flag == FLAG_FAILED else None
    data["errorMessage"] = failure.message if failure else (None if nulls else "")
    data["status"] = cover.status(flag)
    return data


def callback_payload(cover: Cover, base_url: str, style: Style) -> dict[str, Any]:
    """The JSON body Kie POSTs when ``cover`` ends (Kie's "Cover Generation Callbacks").

    Success: code 200, ``data.taskId`` and ``data.images``. Failure: the
    failure's code and message and ``data.taskId``; ``data.images`` is
    left out, or ``null`` with ``style.unset_fields = "null"``.
    """
    if cover.failure is None:
        return {
            "code": 200,
            "msg": "success",
            "data": {"taskId": cover.cover_id, "images": image_urls(base_url, cover.cover_id)},
        }
    data: dict[str, Any] = {"taskId": cover.cover_id}
    if style.unset_fields == "null":
        data["images"] = None
    return {"code": cover.failure.callback_code, "msg": cover.failure.message, "data": data}
