"""`per_process`: the one way this project keeps a value per process.

Connections (Redis clients, the Kie session, the job store, the notice sender)
must not cross a fork: a prefork pool child that used its parent's socket would
share it with its siblings. A `per_process` function makes its value once in
each process, on first use, and makes a new one after a fork.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A zero-argument function whose result is made once per process (see module)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        functools.update_wrapper(self, factory)
        self._factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: T | None = None

    def __call__(self) -> T:
        pid = os.getpid()
        value = self._value
        if self._pid == pid and value is not None:
            return value
        with self._lock:
            if self._pid != pid or self._value is None:
                self._value = self._factory()
                self._pid = pid
            return self._value

    def reset(self) -> None:
        """Forget the value (the next call makes a new one)."""
        with self._lock:
            self._pid = None
            self._value = None


def per_process(factory: Callable[[], T]) -> PerProcess[T]:
    """Decorator: make `factory`'s value once per process (see the module docstring)."""
    return PerProcess(factory)
