"""How a stand-in is set up: :class:`StandinConfig` and the helpers that check or parse it."""

from __future__ import annotations

import argparse
import ipaddress
import re
from dataclasses import dataclass

from .style import Style


@dataclass
class StandinConfig:
    """How a :class:`KieStandin` behaves. All fields have working defaults.

    Attributes:
        host: address to bind and to put in URLs; must be a loopback address
            or ``"localhost"``. Default ``"127.0.0.1"``.
        port: TCP port; default 0 picks a free one (read it from
            :attr:`KieStandin.base_url`).
        api_keys: accepted ``Authorization: Bearer`` keys; default
            ``("standin-key",)``.
        rate_limit: ``(count, per_seconds)``: at most ``count`` accepted
            generations per key in any sliding window of ``per_seconds``
            seconds; ``None`` = unlimited. Default ``(20, 10.0)`` like Kie.
        cover_seconds: seconds from an accepted generate to the finished
            cover; half-way it turns from pending to generating. Default 0.5.
        credits: starting credits; default 1000.0.
        cost_per_cover: credits charged per accepted generate; default 1.0.
        webhook_hmac_key: when set, callbacks carry ``X-Webhook-Timestamp``
            and ``X-Webhook-Signature``; default ``None`` (unsigned).
        codes_in_body_only: when True, API error answers use HTTP 200 with
            the code only in the body envelope; default False (the code is the
            HTTP status too). The starting ``Style.code_form``.
        error_data: ``"absent"`` (default, as documented) or ``"null"``:
            whether error envelopes carry ``"data": null``.
        time_format: ``"iso"`` (default, as documented) or ``"epoch-ms"``:
            record-info's ``createTime``/``completeTime``.
        unset_fields: ``"documented"`` (default) or ``"null"``: how
            record-info shows fields not set yet (see ``style``).
        duplicate_code: 400 (default, as documented) or 409: the answer to a
            generate for a music task that already has a cover.

    The last five are the starting :class:`Style` (see ``style``); a running
    stand-in's style can be changed, and overridden per request.
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: tuple[str, ...] = ("standin-key",)
    rate_limit: tuple[int, float] | None = (20, 10.0)
    cover_seconds: float = 0.5
    credits: float = 1000.0
    cost_per_cover: float = 1.0
    webhook_hmac_key: str | None = None
    # The style's defaults, read from Style itself (one place for each).
    codes_in_body_only: bool = Style.code_form == "body"
    error_data: str = Style.error_data
    time_format: str = Style.time_format
    unset_fields: str = Style.unset_fields
    duplicate_code: int = Style.duplicate_code

    def initial_style(self) -> Style:
        """The :class:`Style` these fields describe.

        Raises:
            ValueError: when one of them is not a value the style accepts.
        """
        return Style(
            code_form="body" if self.codes_in_body_only else "status",
            error_data=self.error_data,
            time_format=self.time_format,
            unset_fields=self.unset_fields,
            duplicate_code=self.duplicate_code,
        )


def check_loopback_host(host: str) -> None:
    """Refuse to bind anywhere but loopback: this machine must stay unreachable.

    Args:
        host: ``"localhost"`` or an IPv4/IPv6 literal such as ``"127.0.0.1"``
            or ``"::1"``.

    Raises:
        ValueError: when ``host`` is neither ``"localhost"`` nor a loopback
            address.
    """
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"host must be a loopback address or 'localhost', got {host!r}") from exc
    if not address.is_loopback:
        raise ValueError(f"host must be a loopback address, got {host!r}")


def parse_rate_limit(text: str) -> tuple[int, float] | None:
    """Parse a ``--rate-limit`` option: ``"20/10s"`` or ``"20/10"`` -> ``(20, 10.0)``.

    ``"none"``, ``"off"`` and ``"unlimited"`` (any case) mean no limit and
    give ``None``. The count is accepted generations, the window seconds
    (must be above 0).

    Raises:
        argparse.ArgumentTypeError: on anything else, so argparse reports it
            as a bad option.
    """
    if text.strip().lower() in ("none", "off", "unlimited"):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*", text)
    if match is None or float(match.group(2)) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected COUNT/SECONDS like '20/10s' or 'none', got {text!r}"
        )
    return int(match.group(1)), float(match.group(2))
