"""Settings checked where they matter: --help needs none; an image store whose backend
is missing is refused at start-up, naming the package to install."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kie_covers.config import SettingsError, load_settings
from kie_covers.core.errors import StoreUnusable
from kie_covers.services.image_store import FSSPEC_HINT, check_store
from kie_covers.worker.cli import PASSTHROUGH, build_parser, check_image_store
from tests.conftest import process_env
from tests.services import ROOT

BIN = Path(sys.executable).parent


def _subcommands() -> list[str]:
    """Every `covers` subcommand, as the parser and the passthrough table know them."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices is not None
    return sorted(set(sub.choices) | set(PASSTHROUGH))


# --- the image store's backend -------------------------------------------------------


def test_s3_without_s3fs_is_refused_naming_s3fs() -> None:
    # Given fsspec installed (the test extra) but not s3fs
    assert importlib.util.find_spec("fsspec") is not None
    assert importlib.util.find_spec("s3fs") is None, "needs a protocol whose backend is absent"
    with pytest.raises(StoreUnusable) as refused:
        check_store("s3://bucket/x")
    assert "pip install s3fs" in str(refused.value)
    assert "s3://bucket/x" in str(refused.value)


def test_each_part_of_an_fsspec_chain_is_checked() -> None:
    assert importlib.util.find_spec("gcsfs") is None, "needs a protocol whose backend is absent"
    with pytest.raises(StoreUnusable) as refused:
        check_store("simplecache::gcs://bucket/covers")
    assert "pip install gcsfs" in str(refused.value)


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(StoreUnusable) as refused:
        check_store("nosuchfs://bucket/covers")
    assert "nosuchfs" in str(refused.value)


def test_a_url_store_without_fsspec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules is how Python says "this module cannot be imported".
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(StoreUnusable) as refused:
        check_store("s3://bucket/x")
    assert FSSPEC_HINT in str(refused.value)
    assert FSSPEC_HINT == "pip install 'kie-covers[images]'"


def test_usable_stores_pass(tmp_path: Path) -> None:
    check_store(str(tmp_path / "covers"))  # a directory: no fsspec involved
    check_store(f"file://{tmp_path}/covers")
    check_store("memory://covers")
    check_store(f"simplecache::file://{tmp_path}/covers")


def test_the_refusal_never_shows_credentials() -> None:
    with pytest.raises(StoreUnusable) as refused:
        check_store("s3://AKIDEXAMPLE:hunter2-secret@bucket/x")
    assert "hunter2-secret" not in str(refused.value)
    assert "AKIDEXAMPLE" not in str(refused.value)


def test_the_cli_turns_it_into_a_setting_error() -> None:
    with pytest.raises(SettingsError) as refused:
        check_image_store("s3://bucket/x")
    assert "pip install s3fs" in str(refused.value)
    check_image_store(None)  # unset: nothing to check


@pytest.mark.e2e
@pytest.mark.parametrize("command", [
    [str(BIN / "covers"), "worker"],
    [sys.executable, "-m", "celery", "-A", "kie_covers.worker", "worker", "-c", "1"],
])
def test_a_worker_refuses_to_start_with_a_store_it_cannot_use(command: list[str]) -> None:
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True,
                          env=process_env(COVERS_IMAGE_STORE="s3://bucket/covers"),
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install s3fs" in done.stderr
    assert "ready." not in done.stdout + done.stderr


# --- COVERS_WEB_PORT ---------------------------------------------------------------


def test_the_web_port_is_its_own_setting_not_port(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings({}).web_port == 8000
    assert load_settings({"COVERS_WEB_PORT": "8123", "PORT": "5200"}).web_port == 8123
    with pytest.raises(SettingsError, match="COVERS_WEB_PORT must be a port number"):
        load_settings({"COVERS_WEB_PORT": "70000"})
    # `covers web` without --port leaves the port to COVERS_WEB_PORT, whatever PORT says.
    monkeypatch.setenv("PORT", "5200")
    assert build_parser().parse_args(["web"]).port is None
    assert build_parser().parse_args(["web", "--port", "8001"]).port == 8001


def test_the_procfile_web_line_does_not_pass_port() -> None:
    lines = dict(line.split(":", 1) for line in
                 (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert "covers web" in lines["web"]
    assert "PORT" not in lines["web"].replace("WEB_HOST", "")


# --- --help with no settings at all ----------------------------------------------


def _bare_env(home: Path) -> dict[str, str]:
    """What `env -i PATH=... HOME=...` leaves: no REDIS_URL, KIE_* or COVERS_*."""
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home)}


@pytest.mark.e2e
def test_every_help_works_with_no_settings_and_starts_nothing(tmp_path: Path) -> None:
    commands = [["--help"]] + [[name, "--help"] for name in _subcommands()]
    assert ["worker", "--help"] in commands and ["beat", "--help"] in commands
    # All at once: each is a fresh interpreter, and they are independent.
    running = [(argv, subprocess.Popen([str(BIN / "covers"), *argv], cwd=tmp_path,
                                       env=_bare_env(tmp_path), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True))
               for argv in commands]
    for argv, process in running:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, f"covers {' '.join(argv)}: {stderr}"
        assert "usage:" in stdout.lower(), f"covers {' '.join(argv)}"
        assert "error" not in stderr.lower(), stderr
    # No private Redis was started (it would live in ./.covers) and nothing was written.
    assert not (tmp_path / ".covers").exists()


@pytest.mark.e2e
def test_worker_help_shows_our_usage_and_where_celerys_options_are(tmp_path: Path) -> None:
    env = _bare_env(tmp_path)
    assert not any(name.startswith(("KIE_", "REDIS_", "COVERS_")) for name in env)
    done = subprocess.run([str(BIN / "covers"), "worker", "--help"], check=False,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: covers worker")
    assert "celery -A kie_covers.worker worker --help" in done.stdout
    # ...and that hint works with no settings either.
    celery = subprocess.run([sys.executable, "-m", "celery", "-A", "kie_covers.worker",
                             "worker", "--help"], check=False, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert celery.returncode == 0, celery.stderr
    assert "--concurrency" in celery.stdout
    assert not (tmp_path / ".covers").exists()
    assert os.listdir(tmp_path) == []
