"""Keeping the images: succeeded covers are copied into COVERS_IMAGE_STORE.

Real worker processes, the real callback endpoint, the stand-in's real PNGs, a
real directory on disk. Jobs end either by Kie's callback (in ``covers web``)
or by a poll (in the worker); both must schedule the copy.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.core.errors import ImageRefused
from kie_covers.runtime.messages import send_images
from kie_covers.runtime.redis_server import free_port
from kie_covers.services.images import LocalStore, copy_one, retry_images
from kie_covers.standin import KieStandin
from tests.conftest import process_env
from tests.services import StartWorker, WebProcess, wait_until

APP_CALLBACK = "http://127.0.0.1:9/app-callback"


def music_id() -> str:
    return uuid.uuid4().hex


def files_in(root: Path) -> list[Path]:
    """Every file under `root`, hidden temporary ones included."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def dead_callback_url() -> str:
    """A callback URL nobody listens on, so jobs end by the worker's own poll."""
    return f"http://127.0.0.1:{free_port()}/kie/callback"


@pytest.fixture
def image_web(run_dir: Path, tmp_path: Path) -> Iterator[tuple[WebProcess, Path]]:
    """A ``covers web`` of its own whose COVERS_IMAGE_STORE is set, and that store."""
    store = tmp_path / "store"
    process = WebProcess(free_port(), process_env(COVERS_IMAGE_STORE=str(store)),
                         run_dir).start()
    yield process, store
    process.stop()


def stored_record(job_id: str, count: int, timeout_s: float = 15) -> dict[str, Any]:
    """The record once `count` images are stored (or copying reported an error)."""
    def done() -> bool:
        record = get_cover(job_id)
        return len(record["stored_images"]) == count or bool(record["images_error"])

    wait_until(done, timeout_s, 0.05, f"stored images of job {job_id}")
    return get_cover(job_id)


def _stored_count_is(job_id: str, count: int) -> bool:
    return len(get_cover(job_id)["stored_images"]) == count


def assert_copies_match_kie(record: dict[str, Any], location_of: Callable[[str], str]
                            ) -> None:
    """Each stored copy is byte-identical to what the stand-in serves for its URL."""
    assert record["state"] == "succeeded" and record["images_error"] is None
    assert [entry["url"] for entry in record["stored_images"]] == record["images"]
    for n, entry in enumerate(record["stored_images"]):
        served = requests.get(entry["url"], timeout=5).content
        kept = Path(location_of(entry["location"])).read_bytes()
        assert kept == served
        assert entry["sha256"] == hashlib.sha256(served).hexdigest()
        assert entry["bytes"] == len(served)
        assert entry["content_type"] == "image/png"
        assert entry["location"].endswith(f"/{record['music_task_id']}/{record['job_id']}-{n}.png")


@pytest.mark.e2e
def test_succeeded_covers_are_copied_once_to_a_local_directory(
    standin: KieStandin, start_worker: StartWorker, image_web: tuple[WebProcess, Path]
) -> None:
    # Given a worker and a callback endpoint, both with a local image store
    web, store = image_web
    worker = start_worker(COVERS_IMAGE_STORE=str(store), COVERS_CALLBACK_URL=web.url)
    # When covers are made (mostly ended by Kie's callback, in the web process, which
    # must then schedule the copy itself)
    job_ids = [enqueue_cover(music_id(), APP_CALLBACK, queue=worker.queue) for _ in range(3)]
    assert all(wait_for_cover(j, timeout_s=20)["state"] == "succeeded" for j in job_ids)
    # Then every image is kept, byte for byte, under <music task>/<job>-<n>.png
    records = [stored_record(j, 2) for j in job_ids]
    for record in records:
        assert_copies_match_kie(record, lambda location: location)
        assert all(e["location"].startswith(str(store) + "/") for e in record["stored_images"])
    # And nothing else is in the store (no temporary files left)
    assert len(files_in(store)) == 6
    # When the copy of a job runs again
    first = records[0]
    before = {p: p.stat().st_ino for p in files_in(store)}
    send_images(first["job_id"], worker.queue)
    wait_until(lambda: f"job {first['job_id']}: all 2 images already handled" in worker.log(),
               10, 0.05, "the second copy run")
    # Then it downloaded nothing again: same files (a rename would change the inode)
    assert {p: p.stat().st_ino for p in files_in(store)} == before
    assert get_cover(first["job_id"])["stored_images"] == first["stored_images"]


@pytest.mark.e2e
@pytest.mark.parametrize(("settings", "reason"), [
    # A store that takes nothing over 100 bytes (the stand-in's PNGs are larger)
    ({"COVERS_IMAGE_MAX_BYTES": "100"}, "COVERS_IMAGE_MAX_BYTES (100)"),
    # The production default: no loopback or private targets (the stand-in serves its
    # images on 127.0.0.1)
    ({"COVERS_ALLOW_PRIVATE_TARGETS": "0"}, "127.0.0.1 is a loopback address"),
], ids=["over-the-size-limit", "loopback-in-production"])
def test_a_refused_image_is_not_tried_again_and_the_job_stays_succeeded(
    standin: KieStandin, start_worker: StartWorker, tmp_path: Path, settings: dict[str, str],
    reason: str
) -> None:
    # Given a worker whose store refuses the stand-in's images. Jobs end by its own poll.
    store = tmp_path / "store"
    worker = start_worker(COVERS_IMAGE_STORE=str(store),
                          COVERS_CALLBACK_URL=dead_callback_url(), **settings)
    job_id = enqueue_cover(music_id(), APP_CALLBACK, queue=worker.queue)
    assert wait_for_cover(job_id, timeout_s=20)["state"] == "succeeded"
    # Then copying ends with a reason for each image, at once (a refusal is final, no
    # retries), and the job stays succeeded with nothing stored
    record = stored_record(job_id, 2)
    assert record["state"] == "succeeded" and record["stored_images"] == []
    assert "image 0:" in record["images_error"] and "image 1:" in record["images_error"]
    assert reason in record["images_error"]
    # (The worker logs the ending just after it writes the record.)
    wait_until(lambda: f"job {job_id}: image copy ended: not stored" in worker.log(), 10,
               0.05, "the worker's line on the ending")
    assert "to try again" not in worker.log()
    # And no file, whole or partial, is left in the store
    assert files_in(store) == []


@pytest.mark.e2e
def test_an_fsspec_store_fault_is_retried_then_given_up_and_a_rerun_recovers(
    standin: KieStandin, start_worker: StartWorker, tmp_path: Path
) -> None:
    # Given a store given as a file:// URL, so fsspec is used (a memory:// store would
    # live and die inside the worker process), whose path is a file for now: no
    # directory can be made in it. Jobs end by the worker's own poll.
    store = tmp_path / "fs-store"
    store.write_bytes(b"not a directory")
    worker = start_worker(COVERS_IMAGE_STORE=f"file://{store}",
                          COVERS_CALLBACK_URL=dead_callback_url())
    job_ids = [enqueue_cover(music_id(), APP_CALLBACK, queue=worker.queue) for _ in range(2)]
    assert all(wait_for_cover(j, timeout_s=20)["state"] == "succeeded" for j in job_ids)
    # Then each copy is tried COVERS_MAX_ATTEMPTS (4) times from the due set, then given up
    for job_id in job_ids:
        record = stored_record(job_id, 2)
        assert record["images_error"].startswith(
            "gave up after 4 attempts: image 0: store error")
        assert worker.log().count(f"job {job_id}: 2 image(s) to try again in") == 3
        assert record["state"] == "succeeded" and record["stored_images"] == []
    # When the store is fixed and the copies are asked for again
    store.unlink()
    assert all(retry_images(j) for j in job_ids)
    # Then the images are kept through fsspec, named by the store URL, the error gone
    for job_id in job_ids:
        wait_until(functools.partial(_stored_count_is, job_id, 2), 10, 0.05,
                   f"re-run of {job_id}")
        record = get_cover(job_id)
        assert record["images_error"] is None
        assert all(e["location"].startswith(f"file://{store}/")
                   for e in record["stored_images"])
        assert_copies_match_kie(record, lambda location: location.removeprefix("file://"))
    assert len(files_in(store)) == 4


def test_a_missing_image_or_a_wrong_content_type_is_refused_without_a_file(
    standin: KieStandin, tmp_path: Path
) -> None:
    store = LocalStore(str(tmp_path / "store"))
    # The stand-in is on loopback: allowed here as in development, refused in production.
    for url, reason, allow_private in [
        (f"{standin.base_url}/files/no-such-cover/0.png", "HTTP 404", True),
        (f"{standin.base_url}/_standin/state", "not a PNG, JPEG or WebP file", True),
        (f"{standin.base_url}/files/no-such-cover/0.png", "is a loopback address", False),
    ]:
        with pytest.raises(ImageRefused, match=reason):
            copy_one(url, store, "music", "job-0", max_bytes=10_000_000, timeout_s=2,
                     deadline=float("inf"), allow_private=allow_private)
    assert files_in(tmp_path) == []
