"""Where outbound requests may go: the address policy, as a pure function.

Image downloads and app notices connect only to addresses this check allows,
checked on the resolved address (not the name), so a hostname that resolves to
a private or metadata address is refused as the literal would be. Refused in
production: loopback, private (RFC 1918, ULA), link-local (169.254.0.0/16,
fe80::/10: cloud metadata lives there), multicast, reserved, unspecified, and
anything else not globally routable. With private targets allowed (a setting
for development and tests), loopback and private addresses pass; link-local,
multicast, reserved and unspecified never do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from kie_covers.core.errors import KieCoversError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(KieCoversError):
    """An outbound request's target address is not allowed (see the module docstring)."""


def refusal(address: str, allow_private: bool = False) -> str | None:
    """Why `address` (a literal IPv4 or IPv6 address) is refused, or None if allowed.

    IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) are judged as the IPv4
    address they carry.

    Args:
        allow_private: let loopback and private addresses pass (development only).
    """
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # ::1 is loopback, and also inside ::/8, which Python calls reserved.
    reserved = ip.is_reserved and not ip.is_loopback
    for never, name in ((ip.is_unspecified, "an unspecified"), (ip.is_link_local, "a link-local"),
                        (ip.is_multicast, "a multicast"), (reserved, "a reserved")):
        if never:
            return f"{ip} is {name} address"
    if ip.is_loopback or ip.is_private:
        if allow_private:
            return None
        return f"{ip} is a {'loopback' if ip.is_loopback else 'private'} address"
    if not ip.is_global:
        return f"{ip} is not a globally routable address"
    return None


def is_loopback(address: str) -> bool:
    """True if `address` (a literal IPv4 or IPv6 address, e.g. a WSGI ``REMOTE_ADDR``)
    is a loopback address: 127.0.0.0/8, ``::1``, or ``::ffff:127.x.y.z``.

    Anything that is not an IP address literal (a host name, ``""``, a Unix socket
    path) is not loopback.
    """
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def pick_address(answers: Iterable[str], allow_private: bool = False) -> str:
    """The address to connect to, from a resolver's answers for one host.

    Every answer must be allowed (a name that resolves to a public and a private
    address is refused as a whole: the next lookup could pick the other); the
    first one is returned.

    Raises:
        TargetRefused: no answers, or any answer is refused.
    """
    addresses = list(answers)
    if not addresses:
        raise TargetRefused("the host has no address")
    for address in addresses:
        reason = refusal(address, allow_private)
        if reason is not None:
            raise TargetRefused(f"refused: {reason}")
    return addresses[0]
