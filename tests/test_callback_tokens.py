"""Per-job callback tokens, the shared secret, and the store's side of callbacks.

Fast layer, in process: the token functions, `CallbackSecrets` against the suite's
real Redis, and `JobStore.finish_by_cover` with the job a callback's URL names and
the cap on early callbacks.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from kie_covers.config import get_settings, keys
from kie_covers.core.secret import Secret
from kie_covers.core.signing import callback_token, callback_token_matches, job_callback_url
from kie_covers.runtime.callback_secret import CallbackSecrets
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.store.jobs import JobStore, Lifetimes
from kie_covers.store.run import Run
from kie_covers.worker.http_body import too_deep
from tests.conftest import TOKENS_DB, empty_db

CALLBACK = "http://127.0.0.1:9/cb"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an emptied database of the suite's Redis, this module's own."""
    with empty_db(redis_server, TOKENS_DB) as conn:
        yield conn


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, Lifetimes(result_ttl_s=60, failure_ttl_s=120))


def new_job(store: JobStore) -> str:
    job_id, created = store.enqueue(str(uuid.uuid4()), uuid.uuid4().hex, CALLBACK, 30, "q")
    assert created
    return job_id


def submit(store: JobStore, job_id: str, cover_id: str) -> None:
    job = store.get(job_id)
    assert job is not None
    run = store.begin(job_id, job.music_task_id, job.callback_url, 30, "q")
    assert isinstance(run, Run)
    with run:
        assert run.submitted(cover_id, 30).changed


def secrets_with(client: redis.Redis, current: str | None = None,
                 previous: str | None = None) -> CallbackSecrets:
    settings = dataclasses.replace(
        get_settings(), callback_secret=Secret(current) if current else None,
        callback_secret_previous=Secret(previous) if previous else None)
    return CallbackSecrets(settings, lambda: client)


# --- the token -----------------------------------------------------------------------

def test_a_token_is_url_safe_unpadded_and_bound_to_its_job_and_secret() -> None:
    token = callback_token(Secret("s1"), "job-1")
    assert len(token) == 43 and "=" not in token and "+" not in token and "/" not in token
    assert callback_token_matches([Secret("s1")], "job-1", token)
    assert not callback_token_matches([Secret("s1")], "job-2", token)
    assert not callback_token_matches([Secret("s2")], "job-1", token)
    assert callback_token_matches([Secret("s2"), Secret("s1")], "job-1", token)
    assert not callback_token_matches([], "job-1", token)
    assert not callback_token_matches([Secret("s1")], "job-1", "")


def test_the_callback_url_keeps_its_own_query_and_adds_job_and_token() -> None:
    url = job_callback_url("https://covers.example/kie/callback?region=eu&job=x", "j 1", "t")
    parts = urlsplit(url)
    assert parts.path == "/kie/callback"
    assert parse_qs(parts.query) == {"region": ["eu"], "job": ["j 1"], "token": ["t"]}


def test_json_depth_is_counted_outside_strings_without_recursion() -> None:
    assert not too_deep('{"a": [1, {"b": "[[[[[[[[{{{{"}]}', 3)
    assert too_deep('{"a": [1, {"b": [[]]}]}', 4)
    assert not too_deep('{"a": [1, {"b": [[]]}]}', 5)
    assert not too_deep(r'{"a\"[[[[": 1}', 1)
    assert too_deep("[" * 100_000, 20)  # far deeper than json.loads could recurse


# --- the secret ------------------------------------------------------------------------

def test_the_shared_secret_is_made_once_and_read_by_every_process(client: redis.Redis
                                                                   ) -> None:
    first, second = secrets_with(client), secrets_with(client)
    assert first.shared
    assert client.exists(keys.CALLBACK_SECRET)
    token = first.token("job-1")
    assert second.matches("job-1", token)
    assert not second.matches("job-2", token)
    assert not second.matches("job-1", token[:-1] + ("A" if token[-1] != "A" else "B"))


def test_a_lost_shared_secret_is_written_back_and_a_new_one_is_picked_up(
    client: redis.Redis
) -> None:
    web = secrets_with(client)
    token = web.token("job-1")
    # Redis loses its data: the next process to sign writes its own copy back
    client.delete(keys.CALLBACK_SECRET)
    worker = secrets_with(client)  # started after the loss: makes a new one
    assert worker.token("job-1") != token
    # The web process picks up the new secret the first time a token needs it, and
    # still accepts the one it had
    assert web.matches("job-1", worker.token("job-1"))
    assert web.matches("job-1", token)


def test_a_configured_secret_and_its_predecessor_are_accepted_and_redis_is_not_used(
    client: redis.Redis
) -> None:
    old = secrets_with(client, current="old-secret")
    rotated = secrets_with(client, current="new-secret", previous="old-secret")
    assert not rotated.shared
    assert rotated.matches("job-1", old.token("job-1"))
    assert rotated.matches("job-1", rotated.token("job-1"))
    assert not old.matches("job-1", rotated.token("job-1"))
    assert not client.exists(keys.CALLBACK_SECRET)


def test_the_secret_never_shows_in_repr_or_vars(client: redis.Redis) -> None:
    holder = secrets_with(client)
    value = str(client.get(keys.CALLBACK_SECRET))
    assert value not in repr(holder) and value not in repr(vars(holder))


# --- the store ---------------------------------------------------------------------------

def test_a_callback_ends_only_the_job_its_url_names(store: JobStore) -> None:
    job_a, job_b = new_job(store), new_job(store)
    submit(store, job_a, "cover-a")
    submit(store, job_b, "cover-b")
    body = json.dumps({"code": 200})
    # B's URL with A's cover: refused, nothing changes
    assert store.finish_by_cover("cover-a", body, 60, images=["x"], job_id=job_b) == "mismatch"
    a, b = store.get(job_a), store.get(job_b)
    assert a is not None and a.state.value == "submitted"
    assert b is not None and b.state.value == "submitted"
    # A's own URL: ends A
    ended = store.finish_by_cover("cover-a", body, 60, images=["x"], job_id=job_a)
    assert not isinstance(ended, str) and ended is not None and ended.job_id == job_a


def test_an_early_callback_is_kept_only_for_a_job_waiting_for_its_submit(
    store: JobStore, client: redis.Redis
) -> None:
    waiting, submitted = new_job(store), new_job(store)
    submit(store, submitted, "cover-s")
    body = json.dumps({"code": 200})
    assert store.finish_by_cover("new-cover", body, 60, job_id=waiting) == "unknown"
    assert client.exists(keys.early_callback("new-cover"))
    # A submitted job has its cover: another cover is not its
    assert store.finish_by_cover("other", body, 60, job_id=submitted) == "mismatch"
    # No such job: nothing kept
    assert store.finish_by_cover("ghost", body, 60, job_id="no-such-job") == "mismatch"
    assert not client.exists(keys.early_callback("other"), keys.early_callback("ghost"))


def test_early_callbacks_are_capped_in_bytes_and_room_comes_back_as_they_expire(
    store: JobStore, client: redis.Redis
) -> None:
    job_id = new_job(store)
    body = "x" * 100
    assert store.finish_by_cover("c1", body, 1, job_id=job_id, early_cap_bytes=250) == "unknown"
    assert store.finish_by_cover("c2", body, 1, job_id=job_id, early_cap_bytes=250) == "unknown"
    # A third would make 300 bytes: refused, and nothing kept
    assert store.finish_by_cover("c3", body, 1, job_id=job_id, early_cap_bytes=250) == "full"
    assert not client.exists(keys.early_callback("c3"))
    assert int(client.get(keys.EARLY_BYTES) or 0) == 200
    # The same cover again replaces its body rather than adding to the count
    assert store.finish_by_cover("c2", body, 1, job_id=job_id, early_cap_bytes=250) == "unknown"
    assert int(client.get(keys.EARLY_BYTES) or 0) == 200
    # Once they expire there is room again
    time.sleep(1.1)
    assert store.finish_by_cover("c3", body, 60, job_id=job_id, early_cap_bytes=250) == "unknown"
    assert int(client.get(keys.EARLY_BYTES) or 0) == 100
    assert client.zcard(keys.EARLY_EXPIRY) == 1 and client.hlen(keys.EARLY_SIZES) == 1
    # And the counting keys expire with the bodies they count
    assert 0 < client.pttl(keys.EARLY_BYTES) <= 60_000
