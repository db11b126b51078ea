"""CPU and memory of processes and their children, read from /proc (Linux only).

Shared by `bench.perf` (CPU per cover, RSS in the scale part) and `bench.soak`
(worker memory per round). Every reader answers 0 (or nothing) for a process that
is gone: workers are killed and replaced while they are measured.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Clock ticks per second: the unit of the CPU times in /proc/<pid>/stat.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parent_map() -> dict[int, list[int]]:
    """Every process's children, from /proc/<pid>/stat: parent pid -> child pids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def children_of(pid: int, parents: dict[int, list[int]] | None = None) -> list[int]:
    """Direct children of `pid` (all its threads'); [] if it is gone.

    Read from /proc/<pid>/task/*/children where the kernel has that file, else
    taken from `parents` (see `parent_map`; [] without it).
    """
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    files = list(task_dir.glob("*/children")) if task_dir.exists() else []
    if files:
        for path in files:
            with contextlib.suppress(OSError, ValueError):
                found.extend(int(p) for p in path.read_text().split())
        return found
    return list((parents or {}).get(pid, []))


def with_children(pids: Sequence[int]) -> list[int]:
    """`pids` and their direct children (a worker's pool processes)."""
    return [p for pid in pids for p in (pid, *children_of(pid))]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` used so far; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _vm_rss_kb(pid: int) -> int:
    """VmRSS of `pid` in kB (0 when /proc/<pid>/status has no such line).

    Raises:
        OSError: when the process is gone.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of `pid` in MB (2**20 bytes); 0 if it is gone."""
    try:
        return _vm_rss_kb(pid) / 1024.0
    except OSError:
        return 0.0


def memory_kb(pid: int) -> tuple[int, int]:
    """Resident set size (VmRSS) and proportional set size (Pss, shared pages divided
    among the processes sharing them) of process `pid`, in kB; (0, 0) if it is gone.
    Pss is 0 where /proc/<pid>/smaps_rollup is missing."""
    pss = 0
    try:
        rss = _vm_rss_kb(pid)
    except (OSError, ValueError, IndexError):
        return 0, 0
    with contextlib.suppress(OSError, ValueError, IndexError), \
            open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    return rss, pss


def format_mb(kilobytes_or_bytes: float, unit: int) -> str:
    """A size as MB (10^6 bytes) with one decimal; `unit` is the input's bytes per unit
    (1000 for kB, 1 for bytes)."""
    return f"{kilobytes_or_bytes * unit / 1e6:.1f}"


@dataclass
class Memory:
    """Memory of a set of processes.

    Attributes:
        rss_kb: sum of their VmRSS, kB (pages shared by a pool's processes count in each).
        pss_kb: sum of their Pss, kB (shared pages split among the sharers).
        processes: how many processes were measured.
        main_rss_kb: the part of rss_kb of the processes given (worker main processes),
            the rest being their descendants (pool children).
    """

    rss_kb: int = 0
    pss_kb: int = 0
    processes: int = 0
    main_rss_kb: int = 0

    def describe(self) -> str:
        """``'487.1 MB RSS (mains 190.2 MB, PSS 210.3 MB), 9 processes'``."""
        return (f"{format_mb(self.rss_kb, 1000)} MB RSS "
                f"(mains {format_mb(self.main_rss_kb, 1000)} MB, "
                f"PSS {format_mb(self.pss_kb, 1000)} MB), {self.processes} processes")


def tree_memory(pids: Iterable[int]) -> Memory:
    """Memory of the processes `pids` and all their descendants (pool children)."""
    # The parent map costs a read of every process's stat; only where the kernel has
    # no children files.
    parents = None if list(Path("/proc/self/task").glob("*/children")) else parent_map()
    seen: set[int] = set()
    roots = set(pids)
    stack = list(roots)
    total = Memory()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        rss, pss = memory_kb(pid)
        if rss == 0:
            continue
        seen.add(pid)
        total.rss_kb += rss
        if pid in roots:
            total.main_rss_kb += rss
        total.pss_kb += pss
        total.processes += 1
        stack.extend(children_of(pid, parents))
    return total
