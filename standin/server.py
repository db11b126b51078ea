"""A loopback HTTP stand-in for Kie's Suno cover API.

It behaves like ``https://api.kie.ai`` for the three calls the project makes
(generate a cover, read its details, read the credits), serves the cover
pictures, and sends the completion callbacks, so that developers, tests, the
demo and benchmarks never spend credits. Faults seen in the wild (rate limits,
maintenance, proxies answering HTML or nothing, dropped connections) can be
injected on demand, and everything the stand-in did can be read back
(ledger of paid generations, calls, answers, callbacks).

It only ever binds to and contacts loopback addresses.

Its answers, their variants and its fault triggers are described in the
package's docstring (``kie_covers.standin``).

This module holds :class:`KieStandin` (the public face: lifecycle, control,
observation) and :func:`main`, the command line. The parts: ``config``,
``state``, ``faults``, ``routes`` and ``admin`` (what each request answers),
``callbacks``, ``scheduler`` (when covers finish), ``http_server`` (the
sockets), ``covers``, ``protocol``, ``png``, ``style`` (how answers vary);
``openapi/kie-cover.yaml`` is the contract.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from .callbacks import CallbackSender
from .config import StandinConfig, check_loopback_host, parse_rate_limit
from .faults import new_fault
from .http_server import StandinHTTPServer
from .routes import Router
from .state import StandinState
from .style import STYLE_CHOICES, StyleDefaults

__all__ = ["KieStandin", "StandinConfig", "main"]


class KieStandin:
    """A running (after :meth:`start`) stand-in for Kie's Suno cover API.

    Use as a context manager (``with KieStandin(config) as kie:``) or call
    :meth:`start` and :meth:`stop`. Point the client at :attr:`base_url` with
    one of ``config.api_keys``. Every method is thread-safe.
    """

    def __init__(self, config: StandinConfig | None = None) -> None:
        """Prepare a stand-in; nothing is bound until :meth:`start`.

        Raises:
            ValueError: when ``config.host`` is not a loopback address, or a
                style field of ``config`` holds a value it does not accept.
        """
        self._config = config if config is not None else StandinConfig()
        check_loopback_host(self._config.host)
        self._server: StandinHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._state = StandinState(self._config)
        self._styles = StyleDefaults(self._config.initial_style())
        # The picture URLs need the port, known only once started (port 0
        # picks one), so the parts ask for the base URL when they need it.
        callbacks = CallbackSender(
            self._config, self._state, lambda: self.base_url, self._styles
        )
        self._router = Router(
            self._config, self._state, callbacks.cover_done, lambda: self.base_url, self._styles
        )

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> KieStandin:
        """Bind ``config.host:config.port`` and serve in a daemon thread.

        Returns:
            ``self``, so ``kie = KieStandin().start()`` works.

        Raises:
            RuntimeError: when already started.
            OSError: when the port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        server = StandinHTTPServer(self._config.host, self._config.port, self._router.handle)
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # fast stop(); idle cost is negligible
            name=f"kie-standin:{self._port}",
            daemon=True,
        )
        self._thread.start()
        self._state.start_callbacks()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and cancel pending callbacks. Idempotent."""
        server, thread = self._server, self._thread
        self._server = None
        self._thread = None
        self._state.cancel_callbacks()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> KieStandin:
        """:meth:`start` and return ``self``."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """:meth:`stop`; exceptions propagate."""
        self.stop()

    @property
    def config(self) -> StandinConfig:
        """The configuration this stand-in was made with (do not mutate)."""
        return self._config

    @property
    def base_url(self) -> str:
        """``"http://<host>:<port>"`` with no trailing slash.

        Raises:
            RuntimeError: before the first :meth:`start`.
        """
        if self._port is None:
            raise RuntimeError("stand-in not started")
        host = self._config.host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    # -- control ------------------------------------------------------------

    def inject(
        self,
        endpoint: str,
        fault: str,
        times: int | None = 1,
        *,
        retry_after: str | None = None,
        delay_s: float = 0.0,
        form: str | None = None,
        data: str | dict[str, Any] | None = None,
    ) -> None:
        """Make the next calls to ``endpoint`` misbehave.

        Rules are consulted in the order they were injected; the first that
        matches a call applies to it and uses up one of its ``times``. Faults
        apply before authentication, and a faulted generate is never accepted
        nor charged.

        Args:
            endpoint: ``"generate"``, ``"record-info"``, ``"credit"`` or
                ``"any"`` (all three).
            fault: an error code: documented ``"400"``, ``"401"``,
                ``"402"``, ``"404"``, ``"409"``, ``"422"``, ``"429"``,
                ``"455"``, ``"500"``, or seen in the wild ``"433"``,
                ``"451"``, ``"501"``, ``"505"`` (error envelope in the
                request's style: the code is the HTTP status too unless the
                style or ``form`` says ``"body"``); ``"body-<code>"`` for
                each of them (HTTP 200, code in the body only);
                ``"malformed"`` (HTTP 200, truncated JSON); ``"html"`` (HTTP
                502 HTML page); ``"empty"`` (HTTP 200, empty body);
                ``"reset"`` (connection reset, no answer); ``"slow"`` (wait
                ``delay_s`` then answer normally); ``"no-data"`` (HTTP 200,
                code 200, ``data`` null).
            times: how many calls it affects, at least 1; ``None`` = until
                :meth:`clear_faults`. Default 1.
            retry_after: value of a ``Retry-After`` header (seconds such as
                ``"3"`` or an HTTP date) added to the answer; default none.
            delay_s: seconds to wait before answering; for ``"slow"`` the
                point of the fault, for the others an extra. Default 0.
            form: for error codes, ``"status"`` (HTTP status = code) or
                ``"body"`` (HTTP 200); default None = the request's style.
            data: for error codes, ``"absent"`` (no ``data``), ``"null"``
                (``"data": null``) or a JSON object sent as ``data`` (e.g.
                ``{"taskId": "..."}`` for a 400/409 naming a cover);
                default None = the request's style.

        Raises:
            ValueError: on an unknown endpoint, fault, form or data,
                ``times`` < 1 or a negative delay.
        """
        self._state.add_fault(
            new_fault(
                endpoint, fault, times, retry_after=retry_after, delay_s=delay_s,
                form=form, data=data,
            )
        )

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        self._state.clear_faults()

    def set_credits(self, credits: float) -> None:
        """Set the account's remaining credits (a number; may be fractional).

        Raises:
            ValueError: when ``credits`` is not a number.
        """
        self._state.set_credits(credits)

    def set_callback_mode(self, mode: str, delay_s: float = 0.0) -> None:
        """Choose how covers accepted from now on are announced when they finish.

        Args:
            mode: ``"send"`` (once, the default), ``"drop"`` (never),
                ``"duplicate"`` (twice) or ``"delay"`` (once, ``delay_s``
                seconds after the cover finished).
            delay_s: extra seconds for ``"delay"``; default 0.

        Raises:
            ValueError: on an unknown mode or a negative delay.
        """
        self._state.set_callback_mode(mode, delay_s)

    def set_rate_limit(self, rate_limit: tuple[int, float] | None) -> None:
        """Change the generate rate limit: ``(count, per_seconds)`` or ``None`` (unlimited).

        Generations already accepted keep counting in the new window.

        Raises:
            ValueError: on a negative or non-int count, or a window that is
                not a positive number of seconds.
        """
        self._state.set_rate_limit(rate_limit)

    def set_style(self, **changes: Any) -> None:
        """Change the default answer style (see ``style``), e.g. ``set_style(code_form="body")``.

        Keyword arguments: ``code_form`` (``"status"``/``"body"``),
        ``error_data`` (``"absent"``/``"null"``), ``time_format``
        (``"iso"``/``"epoch-ms"``), ``unset_fields``
        (``"documented"``/``"null"``), ``duplicate_code`` (400/409). A
        request's ``X-Standin-Style`` header still overrides it.

        Raises:
            ValueError: on an unknown field or value (nothing changes then).
        """
        self._styles.update(changes)

    def reset(self) -> None:
        """Return to the state of a freshly started stand-in, keeping the port.

        Forgets covers, the ledger, counters, answers, generate times, rate
        windows and faults; cancels pending callbacks; credits, rate limit,
        callback mode and style go back to the configuration.
        """
        self._state.reset()
        self._styles.reset()

    # -- observation --------------------------------------------------------

    def paid(self) -> dict[str, int]:
        """Ledger: music task id -> number of generate calls accepted and charged."""
        return self._state.paid()

    def counts(self) -> dict[str, int]:
        """Calls received per endpoint, faulted ones included.

        Keys: ``generate``, ``record-info``, ``credit`` (always present).
        """
        return self._state.counts()

    def answers(self) -> dict[str, int]:
        """How often each answer was given, keyed ``"<endpoint>:<code>"``.

        ``<code>`` is the envelope code (``"generate:200"``,
        ``"generate:429"``; body-only codes count under their code). Faults
        that answer no usable envelope count under their name instead:
        ``"generate:malformed"``, ``":html"``, ``":empty"``, ``":reset"``,
        ``":no-data"``.
        """
        return self._state.answers()

    def generate_times(self) -> list[float]:
        """``time.monotonic()`` of every accepted generate, oldest first."""
        return self._state.generate_times()

    def generate_order(self) -> list[str]:
        """The music task id of every accepted generate, oldest first."""
        return self._state.generate_order()

    def callbacks_sent(self) -> int:
        """Callback POSTs made (including those the receiver failed or refused)."""
        return self._state.callbacks_sent()

    def state(self) -> dict[str, Any]:
        """Everything observable at once, as ``GET /_standin/state`` answers it.

        Keys: paid, counts, answers, callbacks_sent, credits, generate_times
        (monotonic seconds), generate_order (their music task ids), rate_limit
        (``[count, per_seconds]`` or null), callback_mode, faults (pending rules),
        style (the default style).
        """
        return {**self._state.snapshot(), "style": self._styles.get().as_dict()}


# -- command line ---------------------------------------------------------------


def _add_style_options(parser: argparse.ArgumentParser, defaults: StandinConfig) -> None:
    """The options choosing the starting style (see ``style``), besides --codes-in-body-only."""
    for option, name in (
        ("--error-data", "error_data"),
        ("--time-format", "time_format"),
        ("--unset-fields", "unset_fields"),
    ):
        parser.add_argument(
            option,
            choices=STYLE_CHOICES[name],
            default=getattr(defaults, name),
            help="answer style (default %(default)s)",
        )
    parser.add_argument(
        "--duplicate-code",
        type=int,
        choices=STYLE_CHOICES["duplicate_code"],
        default=defaults.duplicate_code,
        help="code of a generate for a music task that has a cover (default %(default)s)",
    )


def main(argv: list[str] | None = None) -> int:
    """Run a stand-in from the command line until SIGINT or SIGTERM.

    Prints the base URL (one line, flushed) once it is listening, so scripts
    can read it. Options: ``--host`` (default 127.0.0.1), ``--port`` (default
    0 = free port), ``--key`` (repeatable; default standin-key),
    ``--rate-limit`` (``COUNT/SECONDS`` such as ``20/10s``, or ``none``;
    default 20/10s), ``--cover-seconds`` (default 0.5), ``--credits``
    (default 1000), ``--cost-per-cover`` (default 1), ``--hmac-key`` (sign
    callbacks), and the starting style: ``--codes-in-body-only``,
    ``--error-data absent|null``, ``--time-format iso|epoch-ms``,
    ``--unset-fields documented|null``, ``--duplicate-code 400|409``.

    Returns:
        The process exit status: 0 after a clean stop, 2 on bad options.
    """
    defaults = StandinConfig()
    parser = argparse.ArgumentParser(
        prog="covers standin", description="Loopback stand-in for Kie's Suno cover API."
    )
    parser.add_argument(
        "--host", default=defaults.host, help="loopback address (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=defaults.port, help="TCP port; 0 = any free (default)"
    )
    parser.add_argument("--key", action="append", dest="keys", help="accepted API key (repeatable)")
    parser.add_argument(
        "--rate-limit",
        type=parse_rate_limit,
        default=defaults.rate_limit,
        help="COUNT/SECONDS accepted generations per key, or 'none' (default 20/10s)",
    )
    parser.add_argument("--cover-seconds", type=float, default=defaults.cover_seconds)
    parser.add_argument("--credits", type=float, default=defaults.credits)
    parser.add_argument("--cost-per-cover", type=float, default=defaults.cost_per_cover)
    parser.add_argument(
        "--hmac-key", default=None, help="sign callbacks with this webhook HMAC key"
    )
    parser.add_argument(
        "--codes-in-body-only",
        action="store_true",
        help="answer errors with HTTP 200 and the code only in the body",
    )
    _add_style_options(parser, defaults)
    args = parser.parse_args(argv)

    config = StandinConfig(
        host=args.host,
        port=args.port,
        api_keys=tuple(args.keys) if args.keys else defaults.api_keys,
        rate_limit=args.rate_limit,
        cover_seconds=args.cover_seconds,
        credits=args.credits,
        cost_per_cover=args.cost_per_cover,
        webhook_hmac_key=args.hmac_key,
        codes_in_body_only=args.codes_in_body_only,
        error_data=args.error_data,
        time_format=args.time_format,
        unset_fields=args.unset_fields,
        duplicate_code=args.duplicate_code,
    )
    try:
        standin = KieStandin(config).start()
    except (ValueError, OSError) as exc:
        print(f"standin: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Signal handlers can only be installed from the main thread; elsewhere
    # (e.g. main() called from a test thread) the caller stops the process.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, Any] = {}
    if in_main_thread:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        print(standin.base_url, flush=True)
        # Wake regularly so the signal handler gets to run promptly.
        while not stop.wait(0.25):
            pass
    finally:
        standin.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
