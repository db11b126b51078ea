"""Build `build/typecheck/kie_covers/`: the installed package's layout, as file symlinks.

The folders of the repository (`core/`, `tasks/`, ...) install as `kie_covers.core`,
`kie_covers.tasks`, ... (see ``[tool.setuptools.package-dir]``). Static tools that
read files instead of importing (mypy, import-linter) need that layout on disk;
this makes it from real folders and symlinked files (with `tests/` and `bench/`
beside it). Run the tools from inside the tree, so that the repository's own
`kie_covers/` folder does not hide it; `.ci/lint` does. Prints the tree's path.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "typecheck"


def main(argv: list[str]) -> int:
    """Build the tree in ``argv[0]`` (default `OUT`); print its path."""
    out = Path(argv[0]).resolve() if argv else OUT
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(out, ignore_errors=True)
    # The tests and benchmarks are checked too; they import the package as users do.
    mapping = {**mapping, "tests": "tests", "bench": "bench"}
    for package, folder in mapping.items():
        target = out.joinpath(*package.split("."))
        for source in sorted((ROOT / folder).glob("*.py")):
            target.mkdir(parents=True, exist_ok=True)
            (target / source.name).symlink_to(source)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
