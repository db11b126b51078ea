"""Job states, as the calling app sees them in `get_cover(...)["state"]`."""

from enum import StrEnum


class JobState(StrEnum):
    """Where a cover job is. `SUCCEEDED` and `FAILED` are final."""

    QUEUED = "queued"  #: accepted, not yet submitted to Kie (or waiting to retry the submit)
    SUBMITTED = "submitted"  #: Kie accepted it; waiting for the callback or a poll
    SUCCEEDED = "succeeded"  #: images are known
    FAILED = "failed"  #: ended without a cover; see the job's ``error``

    @property
    def final(self) -> bool:
        """True for SUCCEEDED and FAILED."""
        return self in (JobState.SUCCEEDED, JobState.FAILED)


#: Celery state stored while Kie works on a submitted cover (not a Celery built-in;
#: `AsyncResult.get()` keeps waiting through it).
CELERY_SUBMITTED = "SUBMITTED"
