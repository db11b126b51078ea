"""The pure core and the one-place facts, in process (fast layer: no Redis needed)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import random
import re
import tomllib

import pytest

from kie_covers.config import load_settings
from kie_covers.core import errors
from kie_covers.core.retry import decide
from kie_covers.core.states import JobState, WaitReason
from kie_covers.services.producer import get_cover, wait_for_cover
from kie_covers.services.step import Done, Failed, from_callback
from kie_covers.store.limiter import Gate, Verdict
from kie_covers.store.record import FIELDS, SHOWN, Job
from tests.services import ROOT

SETTINGS = load_settings({})


def all_modules() -> list[str]:
    """Every module of the installed package (the stand-in included), by the package
    list the wheel is built from."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]
    names = list(packages)
    for package in packages:
        path = importlib.import_module(package).__path__
        names += [info.name for info in pkgutil.iter_modules(path, package + ".")]
    return names


def test_every_exception_the_project_defines_descends_from_one_root() -> None:
    # The stand-in plays Kie and is not the product: its errors are its own.
    product = [m for m in all_modules() if not m.startswith("kie_covers.standin")]
    found = []
    for name in product:
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found.append(cls)
    assert len(found) >= 20
    assert [c.__qualname__ for c in found if not issubclass(c, errors.KieCoversError)] == []


def test_a_record_survives_its_hash_and_shows_every_public_key() -> None:
    job = Job.new("j1", "music-1", "http://127.0.0.1:9/cb", "q", 1_700_000_000.25)
    job.images = ["http://127.0.0.1:9/a.png"]
    job.error = errors.UpstreamError("boom", 502).to_dict()
    job.wait_reason = WaitReason.MAINTENANCE
    job.stored_images = [{"url": "u", "location": "/x", "sha256": "0", "bytes": 1,
                          "content_type": "image/png"}]
    job.images_refused = {"u2": "HTTP 404"}
    stored = job.to_hash()
    assert all(isinstance(v, str) for v in stored.values())
    again = Job.from_hash(stored)
    assert again == job
    shown = again.to_dict()
    assert tuple(shown) == SHOWN
    assert shown["created_at"] == "2023-11-14T22:13:20.250+00:00"
    assert shown["waiting_for"] == "maintenance" and shown["state"] == "queued"
    json.dumps(shown)  # JSON-ready


def test_fields_at_their_default_are_not_stored_but_read_back_as_defaults() -> None:
    job = Job.new("j2", "music-2", "", "", 1.0)
    stored = job.to_hash()
    assert set(stored) == {"job_id", "music_task_id", "callback_url", "state", "created_at",
                           "updated_at"}
    assert Job.from_hash(stored) == job
    assert len({spec.name for spec in FIELDS}) == len(FIELDS)


def test_get_cover_and_the_readme_name_every_key_of_a_record() -> None:
    doc = get_cover.__doc__ or ""
    assert [key for key in SHOWN if f"``{key}``" not in doc] == []
    readme = (ROOT / "README.md").read_text()
    assert [key for key in SHOWN if f"`{key}`" not in readme] == []


@pytest.mark.parametrize(("answer", "verdict", "reason"), [
    ("ok", Verdict.GO, None),
    ("probe", Verdict.PROBE, None),
    ("rate_slot", Verdict.WAIT, WaitReason.RATE_SLOT),
    ("rate_limited", Verdict.WAIT, WaitReason.RATE_LIMITED),
    ("maintenance", Verdict.WAIT, WaitReason.MAINTENANCE),
    ("out_of_credits", Verdict.WAIT, WaitReason.OUT_OF_CREDITS),
    ("something else", Verdict.WAIT, WaitReason.PAUSED),
])
def test_the_limiters_answers_become_verdicts_and_reasons(
    answer: str, verdict: Verdict, reason: WaitReason | None
) -> None:
    gate = Gate.from_script(1500, answer)
    assert (gate.verdict, gate.reason) == (verdict, reason)
    assert gate.go is (verdict is Verdict.GO)
    assert gate.wait_s == (1.5 if verdict is Verdict.WAIT else 0.0)


@pytest.mark.parametrize(("error", "waits"), [
    (errors.RateLimited("slow down", 429, retry_after=7), 7.0),
    (errors.Maintenance("down", 455), SETTINGS.maintenance_pause),
    (errors.Maintenance("down", 455, retry_after=3), 3.0),
    (errors.NotFound("no such music", 404), None),
    (errors.Unauthorized("bad key", 401), None),
    (errors.GenerationFailed("no cover"), None),
])
def test_the_retry_policy_is_data(error: errors.CoverError, waits: float | None) -> None:
    decision = decide(error, retries=0, faults=0, waited_for_credits_s=0, settings=SETTINGS)
    assert decision.wait_s == waits


def test_backoff_waits_grow_and_counted_faults_give_up() -> None:
    rng = random.Random(1)
    upstream = errors.UpstreamError("502")
    ceilings = [min(SETTINGS.backoff_max, SETTINGS.backoff_base * 2 ** n) for n in range(4)]
    for retries, ceiling in enumerate(ceilings):
        wait = decide(upstream, retries=retries, faults=0, waited_for_credits_s=0,
                      settings=SETTINGS, rng=rng).wait_s
        assert wait is not None and 0 <= wait <= ceiling
    last = decide(upstream, retries=9, faults=SETTINGS.max_attempts - 1,
                  waited_for_credits_s=0, settings=SETTINGS)
    assert last.wait_s is None and "gave up" in last.reason
    credits = errors.OutOfCredits("empty", 402)
    assert decide(credits, retries=0, faults=0, waited_for_credits_s=SETTINGS.credits_max_wait,
                  settings=SETTINGS).wait_s is None


def test_a_stored_callback_becomes_an_outcome() -> None:
    ok = {"code": 200, "msg": "success", "data": {"taskId": "c1", "images": ["http://a/1"]}}
    assert from_callback(json.dumps(ok)) == Done(["http://a/1"])
    failed = {"code": 501, "msg": "generation failed", "data": {"taskId": "c1"}}
    outcome = from_callback(json.dumps(failed))
    assert isinstance(outcome, Failed) and outcome.error.kind == "generation_failed"
    assert isinstance(from_callback('{"code": "nope"}'), Failed)


def test_wait_reasons_and_states_are_enums_with_stable_values() -> None:
    assert WaitReason.parse("") is None and WaitReason.parse("rate_slot") is WaitReason.RATE_SLOT
    assert WaitReason.parse("gremlins") is WaitReason.PAUSED
    assert [s.value for s in JobState if s.final] == ["succeeded", "failed"]
    # The limiter's own wait and Kie's 429 no longer differ by one letter
    assert re.sub(r"\W", "", WaitReason.RATE_SLOT) != re.sub(r"\W", "", WaitReason.RATE_LIMITED)


@pytest.mark.parametrize("timeout_s", [float("nan"), float("inf"), -1.0])
def test_wait_for_cover_refuses_a_wait_that_would_never_end(timeout_s: float) -> None:
    with pytest.raises(errors.BadArgument, match="timeout_s"):
        wait_for_cover("any-job", timeout_s=timeout_s)
