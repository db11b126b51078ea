"""The shipped monitoring files: the alert rules pass promtool (syntax and their unit
tests), and every metric the Grafana dashboard and the rules use is one that
``covers metrics`` really serves.

promtool comes with Debian's ``prometheus`` package (``.ci/run`` installs it); the
suite requires it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest

from kie_covers.config import keys
from kie_covers.core import errors
from kie_covers.runtime.redis_server import RedisServer
from kie_covers.store.jobs import JobStore, Lifetimes
from kie_covers.store.overview import LimiterSpec, read_overview
from kie_covers.worker.metrics_server import make_registry
from tests.conftest import STORE_DB, empty_db
from tests.services import ROOT

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

#: PromQL words that are not metric names (functions, aggregations, keywords).
PROMQL_WORDS = frozenset({
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "delta",
    "histogram_quantile", "time", "absent", "abs", "clamp_min", "clamp_max",
    "max_over_time", "min_over_time", "avg_over_time", "by", "without", "on",
    "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
})
#: Sample name suffixes of each metric type: a counter is sampled as ``x_total`` (its
#: TYPE line names it so, or as ``x``), a histogram as ``x_bucket``, ``x_count``, ``x_sum``.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",)}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's prometheus package "
                    "(apt-get install prometheus; .ci/run does it), the suite needs it")
    return path


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    bare = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range durations
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return words - PROMQL_WORDS


def rule_exprs() -> list[str]:
    """The expressions of the rules file (read with the standard library only: each
    rule's ``expr`` is a plain or ``|`` block scalar)."""
    exprs: list[str] = []
    lines = RULES.read_text().splitlines()
    for n, line in enumerate(lines):
        found = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not found:
            continue
        indent, value = len(found.group(1)), found.group(2).strip()
        if value != "|":
            exprs.append(value)
            continue
        block = []
        for following in lines[n + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        exprs.append(" ".join(block))
    return exprs


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with empty_db(redis_server, STORE_DB) as conn:
        yield conn


def served(client: redis.Redis) -> set[str]:
    """The sample names ``covers metrics`` serves after a small run on `client`."""
    store = JobStore(client, Lifetimes(result_ttl_s=60, failure_ttl_s=60))
    for music in (uuid.uuid4().hex, uuid.uuid4().hex):
        job_id, _ = store.enqueue(str(uuid.uuid4()), music, "http://127.0.0.1:9/cb", 30, "q")
        store.finish(job_id, error=errors.NotFound("gone", 404) if "0" in music else None)
    # What a worker's callback-endpoint check writes (runtime/callback_health.py).
    client.hset(keys.METRIC_GAUGES, "callback_endpoint_up", 1)
    specs = [LimiterSpec("generate", 20, 10.1), LimiterSpec("status", 100, 10.1)]
    registry = make_registry(client, lambda: read_overview(client, specs, dead_after_s=5))
    text = generate_latest(registry).decode()
    names: set[str] = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        base = family.removesuffix("_total") if kind == "counter" else family
        names.update(base + suffix for suffix in SUFFIXES[kind])
    return names


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True,
                             text=True, check=False, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool, "test", "rules", str(RULE_TESTS)], capture_output=True,
                            text=True, check=False, timeout=120, cwd=MONITORING)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("covers_pause_seconds_left > 0",
                                                "covers_pause_seconds_left >", 1))
    checked = subprocess.run([promtool(), "check", "rules", str(broken)],
                             capture_output=True, text=True, check=False, timeout=60)
    assert checked.returncode != 0


def test_every_metric_the_dashboard_and_rules_use_is_served(client: redis.Redis) -> None:
    serves = served(client)
    used_by_rules = set().union(*(metric_names(e) for e in rule_exprs()))
    used_by_dashboard = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert len(rule_exprs()) == 7
    assert sorted(used_by_rules - serves) == []
    assert sorted(used_by_dashboard - serves) == []
    # The dashboard covers the cluster's state, endings, answers and the limiter.
    assert {"covers_jobs", "covers_waiting_jobs", "covers_waiting_oldest_age_seconds",
            "covers_jobs_ended_total", "covers_api_answers_total", "covers_limiter_granted",
            "covers_limiter_limit", "covers_pause_seconds_left", "covers_credits_held",
            "covers_credits_checked_timestamp_seconds", "covers_notices_pending",
            "covers_quarantined_messages", "covers_workers_live"} <= used_by_dashboard


def test_the_name_check_sees_a_metric_nobody_serves(client: redis.Redis) -> None:
    names = metric_names('sum by (kind) (rate(covers_nonexistent_total{state="x"}[5m]))'
                         " / ignoring (kind) group_left covers_jobs")
    assert names == {"covers_nonexistent_total", "covers_jobs"}
    assert "covers_nonexistent_total" not in served(client)


def test_the_dashboard_is_a_grafana_dashboard_with_one_datasource_variable() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
