"""Structured fields for log lines about a job (used by the JSON log format)."""

from __future__ import annotations

from typing import Any

from kie_covers.store.jobs import Job


def job_fields(job: Job, step: str) -> dict[str, Any]:
    """``extra=`` for a log line about one step of `job`: job id, music task id, step."""
    return {"job_id": job.job_id, "music_task_id": job.task_id, "step": step}
