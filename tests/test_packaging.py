"""The package as users install it: one top-level name, next to an app's own modules.

The repository's folders (`core/`, `tasks/`, `config/`, ...) install as
`kie_covers.core`, `kie_covers.tasks`, ... (``[tool.setuptools.package-dir]``).
Here the package is built and installed for real (a wheel, not editable) into a
directory of its own, and used from an app whose working directory holds its own
`tasks.py` and `config/`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import process_env
from tests.services import ROOT

pytestmark = pytest.mark.e2e

#: What a copy of the repository leaves out: version control, environments, build
#: output and caches. (A build in the repository itself would write `build/` and
#: `*.egg-info` there, and setuptools would ship whatever stale modules an earlier
#: build left in `build/lib`.)
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                    "__pycache__", ".*cache*", ".covers", ".hypothesis")

#: The app's side: a subprocess in the app's directory, the package on PYTHONPATH.
APP_SCRIPT = textwrap.dedent("""
    import importlib.metadata, json, sys
    from pathlib import Path

    site, queue, music_task = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    from kie_covers import enqueue_cover, get_cover

    job_id = enqueue_cover(music_task, "http://127.0.0.1:9/app-callback", queue=queue)
    record = get_cover(job_id)
    package_names = [name for name in sys.modules
                     if name == "kie_covers" or name.startswith("kie_covers.")]
    outside = sorted(name for name in package_names
                     if getattr(sys.modules[name], "__file__", None)
                     and not Path(sys.modules[name].__file__).is_relative_to(site))
    clashing = sorted(name for name in ("tasks", "config", "core", "store", "runtime",
                                        "services", "worker", "standin")
                      if name in sys.modules)
    import config
    import tasks

    (script,) = [ep for ep in importlib.metadata.entry_points(group="console_scripts")
                 if ep.name == "covers"]
    main = script.load()
    print(json.dumps({
        "job_id": job_id, "record": record, "package_modules": len(package_names),
        "outside_site": outside, "loaded_before_the_app": clashing,
        "tasks": [tasks.__file__, tasks.WHO], "config": [config.__file__, config.WHO],
        "covers": [script.value, main.__module__, sys.modules[main.__module__].__file__],
    }))
""")


def _setuptools_major() -> int:
    """The major version of the setuptools this Python can import (0 if none)."""
    if importlib.util.find_spec("setuptools") is None:
        return 0
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built from a copy of the repository and installed into a directory."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE, symlinks=True)
    target = work / "site"
    # pyproject.toml asks for setuptools>=68. A venv made by `python3 -m venv` has an
    # older one (3.11's ensurepip brings 65): then pip builds in an isolated environment
    # it fills from the package index, as `pip install -e '.[test]'` did.
    isolation = ["--no-build-isolation"] if _setuptools_major() >= 68 else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", *isolation,
         "--disable-pip-version-check", "--no-input", "--target", str(target), str(source)],
        check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return target


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """An app's working directory with its own `tasks.py` and `config/` package."""
    (tmp_path / "tasks.py").write_text('"""The app\'s own tasks."""\nWHO = "app tasks"\n')
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "__init__.py").write_text('WHO = "app config"\n')
    yield tmp_path


def _installed_dist(site: Path) -> importlib.metadata.Distribution:
    (dist,) = [d for d in importlib.metadata.distributions(path=[str(site)])
               if d.metadata["Name"] == "kie-covers"]
    return dist


def test_the_wheel_installs_one_top_level_package_and_its_metadata(site: Path) -> None:
    dist = _installed_dist(site)
    dist_info = f"kie_covers-{dist.version}.dist-info"
    # The only importable name is kie_covers (`bin/` holds the console script: pip
    # --target puts scripts there)
    assert sorted(p.name for p in site.iterdir()) == sorted(["bin", "kie_covers", dist_info])
    assert sorted(p.name for p in (site / "bin").iterdir()) == ["covers"]
    assert (site / dist_info / "top_level.txt").read_text().split() == ["kie_covers"]
    # And every package pyproject.toml names is there, under kie_covers
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in pyproject["tool"]["setuptools"]["packages"]:
        assert (site.joinpath(*package.split(".")) / "__init__.py").is_file(), package
    # The HTTP API's OpenAPI document ships as package data, the repository's file
    api_doc = site / "kie_covers" / "worker" / "openapi" / "covers-api.json"
    assert api_doc.read_bytes() == (ROOT / "worker" / "openapi" / "covers-api.json").read_bytes()
    # And every data file pyproject.toml names (the Lua scripts, the stand-in's
    # OpenAPI document)
    for package, patterns in pyproject["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            shipped_files = list(site.joinpath(*package.split(".")).glob(pattern))
            sources = list((ROOT / pyproject["tool"]["setuptools"]["package-dir"][package])
                           .glob(pattern))
            assert sources and sorted(p.name for p in shipped_files) == sorted(
                p.name for p in sources), (package, pattern)
    installed = [str(f) for f in dist.files or []]
    assert installed and all(f.startswith(("kie_covers/", f"{dist_info}/"))
                             or f.endswith("/bin/covers") for f in installed), installed
    # And the console script is `covers`, run by kie_covers.worker.cli:main
    (covers,) = dist.entry_points.select(group="console_scripts")
    assert (covers.name, covers.value) == ("covers", "kie_covers.worker.cli:main")


def test_an_app_with_its_own_tasks_and_config_uses_the_installed_package(
    site: Path, app_dir: Path
) -> None:
    # Given an app whose directory holds tasks.py and config/, the package on its path,
    # and the suite's settings (REDIS_URL among them) in its environment
    queue = f"covers-packaging-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    music_task = uuid.uuid4().hex
    env = process_env(PYTHONPATH=str(site))
    # When it enqueues a job and reads it back, then imports its own modules
    done = subprocess.run([sys.executable, "-c", APP_SCRIPT, str(site), queue, music_task],
                          check=False, cwd=app_dir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    try:
        # Then the job is in the suite's Redis, queued on that queue, as get_cover says
        record = seen["record"]
        assert record["job_id"] == seen["job_id"] and record["state"] == "queued"
        assert music_task in record.values()  # (under whichever key the record names it)
        with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
            assert client.llen(queue) == 1
        # And every kie_covers module came from the installed copy, none of the
        # repository's folders was loaded as a top-level module...
        assert seen["package_modules"] > 10 and seen["outside_site"] == []
        assert seen["loaded_before_the_app"] == []
        # ...so `import tasks` and `import config` still give the app's own
        assert seen["tasks"] == [str(app_dir / "tasks.py"), "app tasks"]
        assert seen["config"] == [str(app_dir / "config" / "__init__.py"), "app config"]
        # And the `covers` console script resolves into the installed package
        value, module, path = seen["covers"]
        assert (value, module) == ("kie_covers.worker.cli:main", "kie_covers.worker.cli")
        assert Path(path).is_relative_to(site)
    finally:
        with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
            client.delete(queue)
