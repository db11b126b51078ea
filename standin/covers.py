"""One cover task: how it progresses over time, where its pictures are, how it is announced."""

from __future__ import annotations

from dataclasses import dataclass

#: Kie's ``successFlag`` values.
FLAG_PENDING = 0
FLAG_SUCCESS = 1
FLAG_GENERATING = 2
FLAG_FAILED = 3
#: Kie's ``status`` word for each ``successFlag``.
STATUS_BY_FLAG: dict[int, str] = {
    FLAG_PENDING: "PENDING",
    FLAG_SUCCESS: "SUCCESS",
    FLAG_GENERATING: "GENERATING",
    FLAG_FAILED: "GENERATE_COVER_FAILED",
}

#: Kie usually makes two pictures per cover.
IMAGES_PER_COVER = 2
#: Music task ids starting with this are accepted but their cover fails, so
#: callers can test failed generations.
FAILING_MUSIC_PREFIX = "genfail"

#: How a finished cover is announced: ``"send"`` once, ``"drop"`` never,
#: ``"duplicate"`` twice, ``"delay"`` once after an extra wait.
CALLBACK_MODES: frozenset[str] = frozenset({"send", "drop", "duplicate", "delay"})


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
    fails: bool
    # The callback mode when accepted: a later set_callback_mode() applies to
    # later generations only, so tests can set it without racing covers.
    callback_mode: str = "send"
    callback_delay_s: float = 0.0

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
