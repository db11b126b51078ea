"""Loopback stand-in for Kie's Suno cover API: a real HTTP server that costs no credits.

Start one in-process with ``KieStandin(StandinConfig(...)).start()`` (or as a
context manager), or from a shell with ``python -m kie_covers.standin`` (or ``covers standin``).
"""

from .config import StandinConfig
from .server import KieStandin, main

__all__ = ["KieStandin", "StandinConfig", "main"]
