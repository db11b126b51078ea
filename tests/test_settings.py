"""Settings: every default is named, and a bad value is a clear error at start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kie_covers.config.settings import SETTINGS, load_settings, parse_rate
from kie_covers.core.errors import SettingsError
from kie_covers.core.secret import Secret
from tests.conftest import process_env
from tests.services import ROOT


def test_defaults_load_without_any_environment() -> None:
    settings = load_settings({})
    assert settings.kie_base_url == "https://api.kie.ai"
    assert settings.kie_poll_interval == 30.0
    assert settings.redis_url is None and settings.kie_api_key is None


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("KIE_POLL_INTERVAL", "soon", "number of seconds"),
        ("KIE_POLL_TIMEOUT", "-5", "greater than 0"),
        ("KIE_HTTP_TIMEOUT", "nan", "greater than 0"),
        ("KIE_BASE_URL", "api.kie.ai", "absolute http(s) URL"),
        ("REDIS_URL", "http://localhost:6379", "redis://"),
        ("COVERS_MAX_ATTEMPTS", "0", "at least 1"),
        ("KIE_API_KEY", "has space", "whitespace"),
        ("KIE_CODE_TABLE", "other", "one of kie, sunoapi"),
        ("COVERS_CALLBACK_URL", "ftp://x", "absolute http(s) URL"),
        ("KIE_POLL_INTERVAL", "inf", "finite number greater than 0"),
        ("COVERS_RESULT_TTL", "10", "at least 60 seconds"),
        ("COVERS_FAILURE_TTL", "nan", "finite number greater than 0"),
        ("COVERS_METRICS_PORT", "70000", "port number from 1 to 65535"),
        ("COVERS_METRICS_PORT", "0", "port number from 1 to 65535"),
    ],
)
def test_a_malformed_setting_names_itself(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({name: value})
    assert name in str(caught.value)
    assert words in str(caught.value)


def test_the_redispatch_lease_must_outlive_slow_calls() -> None:
    with pytest.raises(SettingsError, match="COVERS_REDISPATCH_AFTER"):
        load_settings({"KIE_HTTP_TIMEOUT": "100", "COVERS_REDISPATCH_AFTER": "200"})


def test_secrets_never_show_in_repr() -> None:
    settings = load_settings({"KIE_API_KEY": "sk-very-secret", "KIE_WEBHOOK_HMAC_KEY": "whk"})
    assert "sk-very-secret" not in repr(settings)
    assert "whk" not in repr(settings)
    assert settings.require_api_key() == Secret("sk-very-secret")


def test_rates_parse() -> None:
    assert parse_rate("X", "20/10s") == (20, 10.0)
    with pytest.raises(SettingsError, match="X"):
        parse_rate("X", "20 per 10")


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [spec.env for spec in SETTINGS if f"`{spec.env}`" not in readme]
    assert missing == []


@pytest.mark.e2e
def test_a_worker_without_an_api_key_refuses_to_start() -> None:
    env = process_env()
    env.pop("KIE_API_KEY")
    # check=False: the exit code is the point
    done = subprocess.run([sys.executable, "-m", "kie_covers.worker.cli", "worker"],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "KIE_API_KEY" in done.stderr


@pytest.mark.e2e
def test_a_celery_worker_with_a_bad_setting_stops_at_start_naming_it() -> None:
    env = process_env(KIE_POLL_INTERVAL="often")
    done = subprocess.run(  # check=False: the exit code is the point
        [sys.executable, "-m", "celery", "-A", "kie_covers.worker", "worker",
         "--loglevel", "ERROR"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "KIE_POLL_INTERVAL" in done.stderr + done.stdout
