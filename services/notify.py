"""Telling the app how each job ended, when Kie's callbacks come to us.

When ``COVERS_CALLBACK_URL`` is set, Kie calls our endpoint, not the app's; so
once a job ends (succeeded, or failed for good) we POST the outcome to the
job's own ``callBackUrl``: Kie's callback body plus our job id, state and
error, signed as Kie signs (``X-Webhook-Timestamp``, ``X-Webhook-Signature`` =
base64(HMAC-SHA256(COVERS_APP_WEBHOOK_KEY, data.taskId + "." + timestamp)))
when ``COVERS_APP_WEBHOOK_KEY`` is set. A notice the app does not take (no
2xx) is tried again with backoff and full jitter from the due set
(`kie_covers.store.due.Due.NOTICES`) until ``COVERS_NOTIFY_MAX_AGE`` seconds after the
job ended; then it is given up and the reason kept on the job
(``notice_error``).

**The notice id.** Every notice carries ``X-Covers-Notice-Id: <job id>:<retry
round>`` (`NOTICE_ID_HEADER`, `notice_id`; the round is the job's
``retry_rounds``, 0 until a failed job is retried). It is the same on every try
of one ending and differs after a retried job ends again, so an app that keeps
the ids it has taken can drop a repeat: delivery is at least once (an answer
that does not arrive within the cap means the notice is tried again).

**One try.** A POST is capped as a whole at ``COVERS_NOTIFY_TIMEOUT`` seconds
(default 10): connect, send and the whole answer (`kie_covers.runtime.poster`);
an app that trickles its answer is cut at the cap, and that is a failed try.
Notices connect only to addresses the outbound policy allows
(`kie_covers.core.addresses`; loopback and private ones only with
COVERS_ALLOW_PRIVATE_TARGETS=1); a refused target is final: the notice is given
up at once and the reason kept in ``notice_error``.

**Decided once.** A try runs under the notice's lock (`Settings.notice_lock`, 3 x
the cap) and starts only while at least two caps of the lock are left (one for
the POST, one for marking it delivered), so it ends before the lock can expire
and no other process can start the same notice meanwhile; taking the lock also
moves the notice's due-set entry past the lock's end, so the dispatcher does not
hand it on mid-try. See `kie_covers.store.notices` for the whole argument.

**The first try costs no task.** The process that ended the job (the callback
endpoint, or the worker whose poll ended it) hands the notice to one of its own
sender threads (`deliver_soon`). There is one thread per origin (scheme, host,
port) of the callback URLs, at most `MAX_ORIGINS` at a time, each with a
backlog of at most `MAX_BACKLOG` notices and ending after `IDLE_S` seconds
without work: a slow app delays only its own notices. A notice that finds no
room (a new origin beyond `MAX_ORIGINS`, or a full backlog) is left to the due
set. The job's end put the notice there already, so if the process dies first,
the dispatcher sends it as a ``covers.notify_app`` task once
`Settings.notice_lease` has passed; the lock and the ``notified_at`` mark make
sure the app is told once.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
from typing import Any

from kie_covers.config import Settings, get_settings
from kie_covers.core.addresses import TargetRefused
from kie_covers.core.retry import full_jitter
from kie_covers.core.signing import signature
from kie_covers.runtime import poster
from kie_covers.runtime.connections import get_store
from kie_covers.runtime.process import per_process
from kie_covers.store.due import Due
from kie_covers.store.history import event
from kie_covers.store.jobs import Counter, JobStore
from kie_covers.store.notices import LEASE_MARGIN_S, NoticeLock
from kie_covers.store.record import Job

log = logging.getLogger("covers.notify")

#: The header that names a notice: ``<job id>:<retry round>`` (`notice_id`).
NOTICE_ID_HEADER = "X-Covers-Notice-Id"
#: Origins (scheme, host, port) with a live sender thread, at most, per process.
MAX_ORIGINS = 8
#: Notices waiting for one origin's sender thread; beyond this they go by the due set.
MAX_BACKLOG = 100
#: Seconds a sender thread waits for another notice before it ends (freeing its slot).
IDLE_S = 30.0
#: The origin of a callback URL that is not an http(s) URL (its notice is given up).
_NO_ORIGIN: poster.Origin = ("", "", 0)


def notice_body(job: Job) -> dict[str, Any]:
    """The JSON an app receives: Kie's callback shape plus ``jobId``, ``state``, ``error``.

    ``data.taskId`` is Kie's cover task id, or the job id when the job failed
    before Kie gave one.
    """
    error = job.error
    return {
        "code": 200 if error is None else int(error.get("code") or 500),
        "msg": "success" if error is None else str(error.get("message", "")),
        "data": {"taskId": job.cover_task_id or job.job_id, "images": list(job.images)},
        "jobId": job.job_id,
        "musicTaskId": job.music_task_id,
        "state": job.state.value,
        "error": error,
    }


def notice_id(job: Job) -> str:
    """The notice's id: ``<job id>:<retry round>``, the same on every try of one ending."""
    return f"{job.job_id}:{job.retry_rounds}"


def _fits(held: NoticeLock, settings: Settings) -> bool:
    """Whether a whole try, and the mark after it, fit in what is left of `held`.

    One cap (COVERS_NOTIFY_TIMEOUT) for the POST, one more for the delivery mark to
    reach Redis before the lock can expire.
    """
    return held.left() >= 2 * settings.notify_timeout


class _OriginSender:
    """The daemon thread that delivers one origin's notices in order.

    It ends after `IDLE_S` seconds without work; its queue is only ever put to while
    it is registered in its `_Senders` (both under the pool's lock), so no notice is
    left behind in a queue whose thread has ended.
    """

    def __init__(self, pool: _Senders, origin: poster.Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.queue: queue.SimpleQueue[tuple[Job, NoticeLock | None]] = queue.SimpleQueue()
        name = f"covers-notices-{origin[1]}:{origin[2]}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                job, held = self.queue.get(timeout=IDLE_S)
            except queue.Empty:
                if self.pool.retire(self):
                    return
                continue
            try:
                _deliver_queued(job, held)
            except Exception:  # e.g. Redis away: the due set sends it again later
                log.warning("job %s: notice not delivered now; the due set will retry",
                            job.job_id, exc_info=True)


class _Senders:
    """This process's sender threads, one per origin (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_origin: dict[poster.Origin, _OriginSender] = {}

    def offer(self, origin: poster.Origin, job: Job, held: NoticeLock | None) -> str | None:
        """Queue a notice for `origin`'s thread (started if need be).

        Returns:
            None when queued; else why not: ``"origins"`` (`MAX_ORIGINS` threads
            already run for other origins) or ``"backlog"`` (`MAX_BACKLOG` wait).
        """
        with self._lock:
            sender = self._by_origin.get(origin)
            if sender is None:
                if len(self._by_origin) >= MAX_ORIGINS:
                    return "origins"
                sender = self._by_origin[origin] = _OriginSender(self, origin)
            if sender.queue.qsize() >= MAX_BACKLOG:
                return "backlog"
            sender.queue.put((job, held))
        return None

    def retire(self, sender: _OriginSender) -> bool:
        """Unregister an idle `sender`; False if a notice came meanwhile (keep going)."""
        with self._lock:
            if not sender.queue.empty():
                return False
            if self._by_origin.get(sender.origin) is sender:
                del self._by_origin[sender.origin]
            return True

    def origins(self) -> list[poster.Origin]:
        """Origins with a live thread (for tests and diagnostics)."""
        with self._lock:
            return list(self._by_origin)


@per_process
def _senders() -> _Senders:
    """This process's sender threads (none are inherited across a fork)."""
    return _Senders()


def deliver_soon(job: Job) -> None:
    """Deliver an ended job's notice from this process's sender thread for its origin.

    `job` is the record as `JobStore.finish` returned it, just now (its
    ``finished_at`` dates the notice lock it holds). A notice that finds no room is
    left to the due set: one for a new origin beyond `MAX_ORIGINS` is handed on at
    once (its lock released, its entry due now), one behind a full backlog (a slow
    app) waits out its lease (`Settings.notice_lease`) like a dying process's.
    """
    store = get_store()
    held = store.notices.taken_at_finish(job)
    try:
        origin = poster.origin_of(job.callback_url)
    except ValueError:
        origin = _NO_ORIGIN  # its try gives it up at once, with the reason
    why = _senders().offer(origin, job, held)
    if why is None:
        return
    if why == "origins" and held is not None and held.left() > 0:
        store.notices.unlock(job.job_id, held.token)  # first: whoever claims it may begin
        store.due.later(Due.NOTICES, job.job_id, 0.0)
    log.info("job %s: no room for the notice here (%s); the due set sends it", job.job_id,
             why)


def _deliver_queued(job: Job, held: NoticeLock | None) -> str:
    """Deliver a notice a sender thread took from its queue."""
    store = get_store()
    settings = get_settings()
    if held is not None:
        if _fits(held, settings):
            return _send(store, settings, held)
        if held.left() > 0:  # still surely ours, but too little is left for a try
            store.notices.unlock(job.job_id, held.token)
    # Take the lock afresh (or find the notice done, or another process on it).
    return deliver(job.job_id)


def deliver(job_id: str) -> str:
    """Try once to deliver a job's notice.

    Returns:
        ``delivered``, ``retrying``, ``gave_up`` (too old, or its target refused),
        ``busy`` (another process is on it) or ``nothing`` (no job, not ended, or
        already delivered).
    """
    store = get_store()
    begun = store.notices.begin(job_id)
    if isinstance(begun, str):
        return begun
    return _send(store, get_settings(), begun)


def _headers(settings: Settings, job: Job) -> dict[str, str]:
    """The notice's headers: JSON, its id, and Kie's signature when
    COVERS_APP_WEBHOOK_KEY is set."""
    headers = {"Content-Type": "application/json", NOTICE_ID_HEADER: notice_id(job)}
    key = settings.app_webhook_key
    if key is not None:
        stamp = str(int(time.time()))
        headers["X-Webhook-Timestamp"] = stamp
        headers["X-Webhook-Signature"] = signature(key, job.cover_task_id or job.job_id, stamp)
    return headers


def _post(settings: Settings, job: Job) -> tuple[str | None, bool]:
    """POST the notice once, within COVERS_NOTIFY_TIMEOUT seconds in all.

    Returns:
        (None, False) when the app took it; else (what went wrong, whether it is
        final: a target the address policy refuses, or no http(s) URL).
    """
    try:
        poster.origin_of(job.callback_url)
    except ValueError:
        return "the callback URL is not an http(s) URL", True
    body = json.dumps(notice_body(job)).encode()
    try:
        status = poster.post(job.callback_url, body, _headers(settings, job),
                             settings.notify_timeout, settings.allow_private_targets)
    except TargetRefused as exc:
        return f"target refused: {exc}", True
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"network error: {type(exc).__name__}", False
    return (None, False) if 200 <= status < 300 else (f"HTTP {status}", False)


def _note(store: JobStore, job: Job, status: str, problem: str | None = None) -> None:
    """A try of the notice on the job's timeline, living as long as the ended record."""
    life = store.lifetimes
    store.history.add(job.job_id, event("notice", status=status, problem=problem),
                      ttl_s=life.failure_ttl_s if job.error else life.result_ttl_s)


def _send(store: JobStore, settings: Settings, held: NoticeLock) -> str:
    """POST the notice of `held.job`, whose lock the caller holds; release the lock."""
    job = held.job
    job_id = job.job_id
    if not _fits(held, settings):
        # Only when the step that took the lock answered very late: the lock may run
        # out mid-try, so no try now; the due set sends it once the lock is surely gone.
        wait = settings.backoff_base
        if held.left() > 0:
            store.notices.unlock(job_id, held.token)
        else:
            wait += LEASE_MARGIN_S  # the lock may live in Redis a moment past `until`
        store.due.later(Due.NOTICES, job_id, wait)
        log.warning("job %s: too little of the notice lock left for a try", job_id)
        return "busy"
    released = False
    try:
        problem, final = _post(settings, job)
        if problem is None:
            store.notices.delivered(job_id, held.token)
            released = True
            _note(store, job, "delivered")
            log.info("job %s: outcome delivered to the app", job_id)
            return "delivered"
        attempts = store.count(job_id, Counter.NOTICE_ATTEMPTS)
        if attempts is None:  # the job was forgotten or expired meanwhile: nothing to tell
            store.due.leave(Due.NOTICES, job_id)
            return "nothing"
        if final:
            store.notices.gave_up(job_id, problem)
            _note(store, job, "gave_up", problem)
            log.warning("job %s: notice not sent, for good (%s)", job_id, problem)
            return "gave_up"
        age = time.time() - (job.finished_at or time.time())
        if age >= settings.notify_max_age:
            store.notices.gave_up(job_id, f"gave up after {attempts} attempts: {problem}")
            _note(store, job, "gave_up", problem)
            log.warning("job %s: gave up telling the app after %d attempts (%s)", job_id,
                        attempts, problem)
            return "gave_up"
        wait = full_jitter(attempts, settings.backoff_base, settings.backoff_max)
        wait = min(wait, max(0.05, settings.notify_max_age - age))
        # Unlocked first: a worker that claims the entry once it is due must find the
        # lock free, or it would leave the notice for a whole dispatcher lease.
        store.notices.unlock(job_id, held.token)
        released = True
        store.due.later(Due.NOTICES, job_id, wait)
        _note(store, job, "retrying", problem)
        log.info("job %s: app did not take the outcome (%s); again in %.1fs", job_id,
                 problem, wait)
        return "retrying"
    finally:
        if not released:
            store.notices.unlock(job_id, held.token)
