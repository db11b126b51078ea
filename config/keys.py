"""Every Redis key this project writes, in one place.

All keys share the ``covers:`` prefix so an operator can find them with
``SCAN MATCH covers:*``; Celery's own keys (``celery-task-meta-*``, queues) are
Celery's.
"""

PREFIX = "covers:"

#: Sorted set of job ids scored by the unix time (ms) when a worker should next
#: look at the job: its next poll, the end of a retry wait, or the end of the
#: lease of a run in progress (a run that dies is picked up again from here).
DUE = PREFIX + "due"


def job(job_id: str) -> str:
    """Hash: one job's record (see `kie_covers.store.record`; only the store touches it)."""
    return f"{PREFIX}job:{job_id}"


def music(music_task_id: str) -> str:
    """String: the job id currently responsible for a music task id."""
    return f"{PREFIX}music:{music_task_id}"


def cover(cover_task_id: str) -> str:
    """String: the job id that owns a Kie cover task id (for callbacks)."""
    return f"{PREFIX}cover:{cover_task_id}"


def lock(job_id: str) -> str:
    """String: token of the run that currently works on a job."""
    return f"{PREFIX}lock:{job_id}"


def early_callback(cover_task_id: str) -> str:
    """String: a callback that arrived before its submit was recorded (JSON)."""
    return f"{PREFIX}early:{cover_task_id}"

#: The three keys that cap the bytes of early callbacks kept (COVERS_EARLY_CALLBACK_BYTES),
#: kept by the finish script only. String: bytes of the early callbacks kept and not yet
#: expired.
EARLY_BYTES = PREFIX + "early-bytes"
#: Sorted set: cover ids of the early callbacks counted in EARLY_BYTES, by when they
#: expire (ms).
EARLY_EXPIRY = PREFIX + "early-expiry"
#: Hash: cover id -> bytes of its early callback counted in EARLY_BYTES.
EARLY_SIZES = PREFIX + "early-sizes"
#: String, no expiry: the secret of the callback URLs' per-job tokens when
#: COVERS_CALLBACK_SECRET is unset; made once (SET NX) and shared by every process on
#: this Redis. Deleting it invalidates the callback URLs of every job in flight (they are
#: then tracked by polling).
CALLBACK_SECRET = PREFIX + "callback-secret"

#: String with a PX expiry: while it exists nobody calls Kie; its value is the reason
#: (``rate_limited`` after a 429, ``maintenance`` after a 455).
PAUSE = PREFIX + "pause"
#: String: set while the account is out of credits (402/433); no generate is sent.
CREDITS_HOLD = PREFIX + "hold:credits"
#: String with a PX expiry: the one worker allowed to check the credits right now.
CREDITS_PROBE = PREFIX + "hold:credits:probe"


def rate_sent(limiter: str) -> str:
    """Sorted set: when each call that passed limiter `limiter` was let through (ms)."""
    return f"{PREFIX}rate:{limiter}:sent"


def rate_slots(limiter: str) -> str:
    """Sorted set: the slot (ms) reserved for each waiting job, in reservation order."""
    return f"{PREFIX}rate:{limiter}:slots"


def rate_tickets(limiter: str) -> str:
    """Hash: job id -> its reserved slot (ms), until the job uses it."""
    return f"{PREFIX}rate:{limiter}:tickets"

# The fair generate limiter's waiting room (`kie_covers.store.fair`).


def rate_grants(limiter: str) -> str:
    """Sorted set: job id -> when its grant (a slot handed to it) expires (ms)."""
    return f"{PREFIX}rate:{limiter}:grants"


def rate_waiting(limiter: str) -> str:
    """Hash: job id -> ``lane<TAB>tenant<TAB>arrival us`` of every job queued or granted."""
    return f"{PREFIX}rate:{limiter}:waiting"


def rate_fair_state(limiter: str) -> str:
    """Hash: the turn counter of the tenant rings (``turn``) and the bulk lane's credit
    (``bulk_credit``, thousandths of a slot)."""
    return f"{PREFIX}rate:{limiter}:fair"


def rate_grant_log(limiter: str) -> str:
    """List: the last `kie_covers.store.fair.GRANT_LOG_LENGTH` slots handed out, oldest
    first, each ``<ms>\t<lane>\t<tenant>\t<job id>`` (who got the limit lately)."""
    return f"{PREFIX}rate:{limiter}:granted"


def rate_ring(limiter: str, lane: str) -> str:
    """Sorted set: the tenants of lane `lane` with jobs queued, by turn (lowest next)."""
    return f"{PREFIX}rate:{limiter}:ring:{lane}"


def rate_queue_prefix(limiter: str) -> str:
    """Prefix of the queues of waiting jobs: ``<prefix><lane>:<tenant>`` is a sorted set
    of job ids by arrival (unix us); the default tenant is ``-`` (no tenant id starts so)."""
    return f"{PREFIX}rate:{limiter}:queue:"

#: Sorted set: every failed job id, scored by its last failure time (ms).
FAILURES = PREFIX + "failures"
#: Sorted set: retryable failed job ids, scored by when the next scheduled retry is due (ms).
RETRY_DUE = PREFIX + "failures:retry-due"
#: String with a PX expiry: held by the beat task running a retry round.
RETRY_ROUND_LOCK = PREFIX + "failures:round-lock"
#: Sorted set: job ids whose outcome is still to be delivered to the app, by due time (ms).
NOTIFY_DUE = PREFIX + "notify:due"


def failures_by_kind(kind: str) -> str:
    """Sorted set: failed job ids of one error kind, by last failure time (ms)."""
    return f"{PREFIX}failures:kind:{kind}"


def failures_by_code(code: object) -> str:
    """Sorted set: failed job ids of one API code (``none`` when there was none)."""
    return f"{PREFIX}failures:code:{'none' if code is None else code}"


def notify_lock(job_id: str) -> str:
    """String: held while one process delivers a job's outcome to the app."""
    return f"{PREFIX}notify-lock:{job_id}"

#: Hash: every metric counter, field ``name|label=value,...`` -> count.
METRIC_COUNTERS = PREFIX + "metrics:counters"
#: Hash: every metric gauge, field ``name`` -> its newest value (last writer wins).
METRIC_GAUGES = PREFIX + "metrics:gauges"


def metric_histogram(name: str) -> str:
    """Hash: one histogram's cumulative buckets (``le=...``), ``sum`` and ``count``."""
    return f"{PREFIX}metrics:hist:{name}"

#: Sorted set: job ids whose images are still to be copied to COVERS_IMAGE_STORE, by
#: due time (ms): the next retry, or the end of the lease of a copy in progress.
IMAGES_DUE = PREFIX + "images:due"


def images_lock(job_id: str) -> str:
    """String: held while one run copies a job's images to the image store."""
    return f"{PREFIX}images-lock:{job_id}"

#: Sorted set: the heartbeat of every worker process (a Celery worker's main process and
#: each of its pool processes), member its holder id (``<node>|<role>|<pid>|<token>``,
#: role ``worker`` or ``pool``), scored by Redis's clock (ms) at its newest beat. A holder
#: whose score is more than COVERS_DEAD_AFTER seconds old is dead: a dispatcher hands its
#: held jobs back (`kie_covers.store.liveness`).
BEATS = PREFIX + "liveness:beats"


def held(holder: str) -> str:
    """Set: the job ids one worker process holds (messages it reserved, runs it does)."""
    return f"{PREFIX}liveness:held:{holder}"


def history(job_id: str) -> str:
    """List: a job's timeline (small JSON events, oldest first, capped; see
    `kie_covers.store.history`), expiring with its record."""
    return f"{PREFIX}history:{job_id}"


# --- the cluster overview's indexes (`kie_covers.store.overview`) ----------------------
# Kept by the job scripts in the same step as each change (``lua/indexes.lua``), so the
# overview counts jobs by state and by wait without scanning job keys.


def state_index(state: str) -> str:
    """Sorted set: the job ids in one `JobState`. Queued and submitted jobs are scored
    by when they entered the state (ms); succeeded and failed ones by when their record
    expires (ms), so entries past their score are gone records (pruned lazily)."""
    return f"{PREFIX}state:{state}"


def waiting(reason: str) -> str:
    """Sorted set: the job ids waiting for one `WaitReason`, by when the wait began (ms)."""
    return f"{PREFIX}waiting:{reason}"

#: List, newest first: broker entries no worker could decode (poison), each a JSON
#: object {at, queue, reason, detail, size, truncated, raw (base64)}; capped at
#: `kie_covers.store.quarantine.QUARANTINE_MAX` entries (see ``covers quarantine``).
#: Filled by `kie_covers.runtime.poison`; its length is the overview's ``quarantined``.
QUARANTINE = PREFIX + "quarantine"
#: Hash: the newest credit check of any worker: ``at`` (unix ms) and ``left`` (credits).
CREDITS_CHECKED = PREFIX + "credits:checked"
#: String: set (to the unix time) once the jobs recorded before the indexes above
#: existed have been indexed (`kie_covers.store.reindex`).
INDEXES_BUILT = PREFIX + "indexes:built"
#: String with an EX expiry: renewed by every worker whose Celery task events are on
#: (``-E``, or a monitor's ``enable_events``). While it lives, `covers web` sends the
#: task event of each job it ends (`kie_covers.runtime.task_view`).
TASK_EVENTS = PREFIX + "task-events"
