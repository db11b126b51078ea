"""The ``profile`` part of `bench.perf`: py-spy samples, and where they went.

`PySpy` records a running process (the driver during the enqueues, worker 0 with
its pool processes during the drain) as raw collapsed stacks; `summarize_profile`
turns the stacks into shares of samples: by process and thread, by the deepest
product frame and what it called, by what the libraries below it were doing, and
by product function. Needs the ``py-spy`` binary (``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT

#: py-spy samples per second, and the longest it records, in seconds.
PROFILE_RATE_HZ = 100
PROFILE_MAX_S = 60.0
#: Seconds given to py-spy to attach before the work starts, and to write its output
#: after SIGINT.
ATTACH_S = 1.0
STOP_TIMEOUT_S = 60.0
#: Directories holding the product's code (profile frames from these are "ours").
PRODUCT_DIRS = tuple(str(ROOT / name) + os.sep for name in (
    "core", "config", "store", "runtime", "services", "tasks", "worker", "kie_covers"))
#: Library packages below celery whose frames say what celery had them do.
UNDER_CELERY = ("kombu", "billiard", "requests", "marshmallow")

#: A sampled stack: its frames (root first) and how many samples it got.
Stack = tuple[list[str], int]


def py_spy_path() -> str | None:
    """The py-spy binary beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpy:
    """``py-spy record`` of a running process, stopped with SIGINT; raw collapsed stacks.

    Args:
        pid: the process to sample.
        out: where the raw (collapsed) stacks go.
        subprocesses: sample its child processes too.
    """

    def __init__(self, pid: int, out: Path, subprocesses: bool = False) -> None:
        binary = py_spy_path()
        if binary is None:
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
        self.out = out
        command = [binary, "record", "--pid", str(pid), "--format", "raw", "--nolineno",
                   "--full-filenames", "--rate", str(PROFILE_RATE_HZ),
                   "--duration", str(int(PROFILE_MAX_S)), "-o", str(out)]
        if subprocesses:
            command.append("--subprocesses")
        self._log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        time.sleep(ATTACH_S)  # attach before the work starts

    def stop(self) -> list[Stack]:
        """Stop sampling; returns (frames root first, samples) per distinct stack."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        stacks: list[Stack] = []
        if self.out.exists():
            for line in self.out.read_text(errors="replace").splitlines():
                frames, _, count = line.rpartition(" ")
                if frames and count.isdigit():
                    stacks.append((frames.split(";"), int(count)))
        return stacks


def _frame_parts(frame: str) -> tuple[str, str]:
    """``"func (path)"`` -> (func, path)."""
    name, _, path = frame.rpartition(" (")
    return (name, path[:-1]) if name else (frame, "")


def _short(frame: str) -> str:
    """``func (/work/main/tasks/jobs.py)`` -> ``tasks/jobs.py:func``; library frames as
    ``package/module.py:func``."""
    name, path = _frame_parts(frame)
    if "site-packages" + os.sep in path:
        return f"{path.split('site-packages' + os.sep, 1)[1]}:{name}"
    if path.startswith(str(ROOT) + os.sep):
        return f"{path[len(str(ROOT)) + 1:]}:{name}"
    if "python3" in path:
        return f"{path.rsplit(os.sep, 1)[-1]}:{name}"
    return f"{path}:{name}"


def _is_product(frame: str) -> bool:
    return _frame_parts(frame)[1].startswith(PRODUCT_DIRS)


def _package(frame: str) -> str | None:
    """The site-packages package a frame is from (None for the stdlib and the product)."""
    path = _frame_parts(frame)[1]
    marker = "site-packages" + os.sep
    return path.split(marker, 1)[1].split(os.sep, 1)[0] if marker in path else None


def _landmark(frames: Sequence[str]) -> str | None:
    """What the libraries were doing: "deepest celery frame > deepest kombu (or billiard,
    requests, marshmallow) frame below it", either part alone if the other is missing,
    else the deepest redis frame; shortened."""
    packages = [_package(f) for f in frames]
    celery_at = max((i for i, p in enumerate(packages) if p == "celery"), default=-1)
    under_at = max((i for i, p in enumerate(packages) if p in UNDER_CELERY and i > celery_at),
                   default=None)
    parts = [_short(frames[i]) for i in (celery_at, under_at) if i is not None and i >= 0]
    if parts:
        return " > ".join(parts)
    redis_at = max((i for i, p in enumerate(packages) if p == "redis"), default=None)
    return _short(frames[redis_at]) if redis_at is not None else None


def _role(process_frames: Sequence[str], frames: Sequence[str]) -> str:
    """What a sampled stack was: a pool process, or which thread of a worker's main process."""
    if len(process_frames) > 1:
        return "pool process"
    if any(f.startswith("DueDispatcher.") for f in frames):
        return "main process: due dispatcher thread"
    if any(f.startswith("Thread._bootstrap") for f in frames):
        return "main process: other threads"
    return "main process: consumer (main thread)"


def summarize_profile(stacks: Sequence[Stack], top: int = 12,
                      root_filter: str | None = None) -> dict[str, Any]:
    """Where the samples went, as shares (0..1) of the samples counted.

    Args:
        stacks: from `PySpy.stop` (recorded with ``--subprocesses`` or not).
        top: rows per list (default 12).
        root_filter: keep only stacks with a frame whose function name is this
            (e.g. ``enqueue_cover``), and count from that frame down.

    Returns:
        ``samples``; and lists of [label, share of samples]: ``roles`` (pool process,
        or which thread of the main process); ``boundary``: "role | deepest product
        frame -> what it called" (``(self)`` when the product frame itself ran), or
        "role | (no product frame) <landmark>"; ``landmarks``: "role | <landmark>",
        what the libraries were doing below the deepest product frame (see
        `_landmark`); ``inclusive``: product functions on the stack.
    """
    total = 0
    counters: dict[str, Counter[str]] = {name: Counter() for name in
                                         ("roles", "boundary", "landmarks", "inclusive")}
    for all_frames, count in stacks:
        process_frames = [f for f in all_frames if f.startswith("process ")]
        frames = [f for f in all_frames if not f.startswith("process ")]
        if root_filter is not None:
            at = next((i for i, f in enumerate(frames)
                       if _frame_parts(f)[0] == root_filter), None)
            if at is None:
                continue
            frames = frames[at:]
        total += count
        role = _role(process_frames, frames) if process_frames else ""
        prefix = f"{role} | " if role else ""
        counters["roles"][role or "all"] += count
        deepest = max((i for i, f in enumerate(frames) if _is_product(f)), default=None)
        # Below the deepest product frame: what the product had the libraries do.
        landmark = _landmark(frames if deepest is None else frames[deepest + 1:])
        if deepest is None:
            where = landmark or " > ".join(_short(f) for f in frames[-2:])
            counters["boundary"][f"{prefix}(no product frame) {where}"] += count
        else:
            callee = _short(frames[deepest + 1]) if deepest + 1 < len(frames) else "(self)"
            counters["boundary"][f"{prefix}{_short(frames[deepest])} -> {callee}"] += count
        if landmark is None:
            landmark = "(no library frame) " + (_short(frames[-1]) if frames else "?")
        counters["landmarks"][prefix + landmark] += count
        for name in {_short(f) for f in frames if _is_product(f)}:
            counters["inclusive"][name] += count

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return [[label, n / total] for label, n in counter.most_common(top)] if total else []

    return {"samples": total, **{name: shares(c) for name, c in counters.items()}}

