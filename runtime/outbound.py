"""Outbound connections that go exactly where the address policy allows.

`connect` resolves a host, checks every answer (`kie_covers.core.addresses`)
and opens a TCP connection to exactly the address it checked, so a name cannot
resolve to one address for the check and another for the connection. Callers
that follow redirects call it again for every hop.
"""

from __future__ import annotations

import socket

from kie_covers.core.addresses import TargetRefused, pick_address


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (TCP), in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetRefused(f"cannot resolve the host: {exc.strerror}") from None
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def connect(host: str, port: int, timeout_s: float, allow_private: bool) -> socket.socket:
    """A TCP connection to `host`:`port`, made only to an allowed, checked address.

    Raises:
        TargetRefused: the host resolves to a refused address (or not at all).
        OSError: the connection failed.
    """
    address = pick_address(resolve(host, port), allow_private)
    return socket.create_connection((address, port), timeout=timeout_s)
