"""Everything a stand-in remembers, behind one lock.

Covers, the ledger of paid generations per music task, calls and answers
counted, credits, the per-key sliding windows of the rate limit, injected
faults and the pending callbacks (entries in one :class:`Scheduler`, not a
thread each, so 100,000 covers can be in flight). Handler threads, the
scheduler's threads and the test thread all go through :class:`StandinState`;
none of them holds its lock while sleeping or doing I/O.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import StandinConfig
from .covers import CALLBACK_MODES, FLAG_FAILED, Cover, failure_for
from .faults import Fault, FaultQueue
from .protocol import ENDPOINTS
from .scheduler import Scheduler

#: Accepted-generation times remembered per key for the rate window.
_WINDOW_MAX = 100_000


@dataclass(frozen=True)
class Accepted:
    """The generate was accepted and charged; ``cover_id`` is the new cover task."""

    cover_id: str


@dataclass(frozen=True)
class RateLimited:
    """The key's window is full; retry after ``retry_after_s`` whole seconds (at least 1)."""

    retry_after_s: int


@dataclass(frozen=True)
class AlreadyGenerated:
    """The music task already has a cover, pending or made: ``cover_id``."""

    cover_id: str


@dataclass(frozen=True)
class OutOfCredits:
    """Fewer credits left than one cover costs."""


#: What :meth:`StandinState.accept_generate` decided.
GenerateOutcome = Accepted | RateLimited | AlreadyGenerated | OutOfCredits


class StandinState:
    """The mutable state of one stand-in; every method is thread-safe."""

    def __init__(self, config: StandinConfig) -> None:
        """Start from ``config``'s credits and rate limit, with nothing recorded."""
        self._config = config
        # One lock around all mutable state below.
        self._lock = threading.Lock()
        self._epoch = 0
        # Finishes covers when due; its own lock is only ever taken inside ours.
        self._scheduler = Scheduler("kie-standin-covers")
        self._init()

    def _init(self) -> None:
        """Set every piece of state to its starting value (caller holds the lock or is __init__)."""
        self._credits: float = self._config.credits
        self._rate_limit: tuple[int, float] | None = self._config.rate_limit
        self._callback_mode = "send"
        self._callback_delay_s = 0.0
        self._faults = FaultQueue()
        self._covers: dict[str, Cover] = {}
        self._cover_by_music: dict[str, str] = {}
        self._paid: dict[str, int] = {}
        self._counts: dict[str, int] = {name: 0 for name in ENDPOINTS}
        self._answers: dict[str, int] = {}
        self._generate_times: list[float] = []
        # The music task id of each accepted generate, in the same order.
        self._generate_music: list[str] = []
        self._windows: dict[str, deque[float]] = {}
        self._callbacks_sent = 0
        # Bumped by reset() so callbacks already under way are not counted
        # against the fresh state.
        self._epoch += 1

    # -- control --------------------------------------------------------------

    def reset(self) -> None:
        """Back to the starting state (see ``KieStandin.reset``); cancels pending callbacks."""
        with self._lock:
            self._init()
            self._scheduler.cancel_all()

    def start_callbacks(self) -> None:
        """Start the scheduler that finishes covers and sends callbacks (on start)."""
        self._scheduler.start()

    def cancel_callbacks(self) -> None:
        """Cancel pending callbacks, disown those under way and stop the scheduler
        (on stop); keeps the rest."""
        with self._lock:
            self._epoch += 1
        self._scheduler.stop()

    def add_fault(self, fault: Fault) -> None:
        """Queue an injected fault rule after those already queued."""
        with self._lock:
            self._faults.add(fault)

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        with self._lock:
            self._faults.clear()

    def set_credits(self, credits: float) -> None:
        """Set the remaining credits (see ``KieStandin.set_credits``).

        Raises:
            ValueError: when ``credits`` is not a number.
        """
        if isinstance(credits, bool) or not isinstance(credits, (int, float)):
            raise ValueError(f"credits must be a number, got {credits!r}")
        with self._lock:
            self._credits = float(credits)

    def set_callback_mode(self, mode: str, delay_s: float = 0.0) -> None:
        """Set the callback mode for later covers (see ``KieStandin.set_callback_mode``).

        Raises:
            ValueError: on an unknown mode or a negative delay.
        """
        if mode not in CALLBACK_MODES:
            raise ValueError(f"unknown callback mode {mode!r}; use one of {sorted(CALLBACK_MODES)}")
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or delay_s < 0:
            raise ValueError(f"delay_s must be a non-negative number, got {delay_s!r}")
        with self._lock:
            self._callback_mode = mode
            self._callback_delay_s = float(delay_s)

    def set_rate_limit(self, rate_limit: tuple[int, float] | None) -> None:
        """Set ``(count, per_seconds)`` or ``None`` (see ``KieStandin.set_rate_limit``).

        Raises:
            ValueError: on a negative or non-int count, or a window that is
                not a positive number of seconds.
        """
        if rate_limit is not None:
            count, per = rate_limit
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"rate limit count must be a non-negative int, got {count!r}")
            if isinstance(per, bool) or not isinstance(per, (int, float)) or per <= 0:
                raise ValueError(f"rate limit window must be positive seconds, got {per!r}")
            rate_limit = (count, float(per))
        with self._lock:
            self._rate_limit = rate_limit

    # -- observation ----------------------------------------------------------

    def paid(self) -> dict[str, int]:
        """A copy of the ledger: music task id -> generate calls accepted and charged."""
        with self._lock:
            return dict(self._paid)

    def counts(self) -> dict[str, int]:
        """A copy of the calls received per endpoint name, faulted ones included."""
        with self._lock:
            return dict(self._counts)

    def answers(self) -> dict[str, int]:
        """A copy of the answers given, keyed ``"<endpoint>:<label>"``."""
        with self._lock:
            return dict(self._answers)

    def generate_times(self) -> list[float]:
        """``time.monotonic()`` seconds of every accepted generate, oldest first."""
        with self._lock:
            return list(self._generate_times)

    def generate_order(self) -> list[str]:
        """The music task id of every accepted generate, oldest first (as
        `generate_times`)."""
        with self._lock:
            return list(self._generate_music)

    def callbacks_sent(self) -> int:
        """Callback POSTs made since the last reset."""
        with self._lock:
            return self._callbacks_sent

    def pending_callbacks(self) -> int:
        """Covers whose finish (and callback) is still waiting for its time."""
        return self._scheduler.pending()

    def credits(self) -> float:
        """The credits left."""
        with self._lock:
            return self._credits

    def snapshot(self) -> dict[str, Any]:
        """Everything observable at once, JSON-ready (see ``KieStandin.state``)."""
        with self._lock:
            return {
                "paid": dict(self._paid),
                "counts": dict(self._counts),
                "answers": dict(self._answers),
                "callbacks_sent": self._callbacks_sent,
                "credits": self._credits,
                "generate_times": list(self._generate_times),
                "generate_order": list(self._generate_music),
                "rate_limit": list(self._rate_limit) if self._rate_limit is not None else None,
                "callback_mode": self._callback_mode,
                "faults": self._faults.describe(),
            }

    # -- requests -------------------------------------------------------------

    def begin_call(self, endpoint: str) -> Fault | None:
        """Count a call to ``endpoint`` and take the fault rule that applies to it, if any."""
        with self._lock:
            self._counts[endpoint] += 1
            return self._faults.take(endpoint)

    def count_answer(self, endpoint: str, label: str) -> None:
        """Count one answer given by ``endpoint``, under ``"<endpoint>:<label>"``."""
        with self._lock:
            key = f"{endpoint}:{label}"
            self._answers[key] = self._answers.get(key, 0) + 1

    def cover(self, cover_id: str) -> tuple[Cover, int] | None:
        """The cover ``cover_id`` and its successFlag now, or None when unknown."""
        with self._lock:
            cover = self._covers.get(cover_id)
            if cover is None:
                return None
            return cover, cover.flag(time.monotonic())

    def accept_generate(
        self,
        key: str,
        music_id: str,
        callback_url: str,
        on_finished: Callable[[str, int], None],
    ) -> GenerateOutcome:
        """Decide a valid, authorized generate and, when accepted, charge it.

        Checks, in order, ``key``'s rate window, an existing cover for
        ``music_id`` (one that failed does not count) and the credits. On
        acceptance, records the cover and the charge and calls
        ``on_finished(cover_id, epoch)`` from the scheduler's pool once the
        cover is finished (after ``config.cover_seconds``, at least 0), or for
        callback mode ``"delay"`` that many seconds later again.
        """
        with self._lock:
            now = time.monotonic()
            # Rate limit first, so a burst of duplicates is throttled too and
            # 429 protects the account, as Kie does.
            retry_after_s = self._retry_after_s(key, now)
            if retry_after_s is not None:
                return RateLimited(retry_after_s)
            existing_id = self._cover_by_music.get(music_id)
            # A failed generation left no cover, so a new attempt is allowed.
            if existing_id is not None and self._covers[existing_id].flag(now) != FLAG_FAILED:
                return AlreadyGenerated(existing_id)
            if self._credits < self._config.cost_per_cover:
                return OutOfCredits()
            cover = self._new_cover(music_id, callback_url, now)
            self._covers[cover.cover_id] = cover
            self._cover_by_music[music_id] = cover.cover_id
            self._credits -= self._config.cost_per_cover
            self._paid[music_id] = self._paid.get(music_id, 0) + 1
            self._generate_times.append(now)
            self._generate_music.append(music_id)
            # Recorded even while unlimited, so a limit set later counts
            # recent calls; bounded so an unlimited benchmark cannot grow it forever.
            self._windows.setdefault(key, deque(maxlen=_WINDOW_MAX)).append(now)
            due = now + cover.duration_s
            if cover.callback_mode == "delay":
                due += cover.callback_delay_s  # waits in the heap, not in a thread
            self._scheduler.call_at(due, on_finished, cover.cover_id, self._epoch)
        return Accepted(cover.cover_id)

    def _retry_after_s(self, key: str, now: float) -> int | None:
        """Whole seconds until ``key`` may generate again, None when it may now (lock held)."""
        if self._rate_limit is None:
            return None
        count, per = self._rate_limit
        window = self._windows.setdefault(key, deque(maxlen=_WINDOW_MAX))
        while window and window[0] <= now - per:
            window.popleft()
        if len(window) < count:
            return None
        wait = (window[0] + per - now) if window else per
        return max(1, math.ceil(wait))

    def _new_cover(self, music_id: str, callback_url: str, now: float) -> Cover:
        """A cover accepted at ``now`` (monotonic seconds) with today's settings (lock held)."""
        return Cover(
            cover_id=uuid.uuid4().hex,
            music_id=music_id,
            callback_url=callback_url,
            create_ms=int(time.time() * 1000),
            created_mono=now,
            duration_s=max(0.0, self._config.cover_seconds),
            failure=failure_for(music_id),
            callback_mode=self._callback_mode,
            callback_delay_s=self._callback_delay_s,
        )

    # -- callbacks ------------------------------------------------------------

    def finish_cover(self, cover_id: str, epoch: int) -> Cover | None:
        """The finished cover, or None when reset or stopped since ``epoch``."""
        with self._lock:
            cover = self._covers.get(cover_id)
            if epoch != self._epoch or cover is None:
                return None
            return cover

    def is_current(self, epoch: int) -> bool:
        """True when no reset or stop happened since ``epoch`` was handed out."""
        with self._lock:
            return epoch == self._epoch

    def refund(self, epoch: int) -> None:
        """Give back one cover's cost (a 531 failure), unless reset or stopped since ``epoch``."""
        with self._lock:
            if epoch == self._epoch:
                self._credits += self._config.cost_per_cover

    def count_callback(self, epoch: int) -> None:
        """Count one callback POST made, unless reset or stopped since ``epoch``."""
        with self._lock:
            if epoch == self._epoch:
                self._callbacks_sent += 1
