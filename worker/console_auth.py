"""Who may use the operations console, and proof that an action came from its page.

**Access.** Without COVERS_CONSOLE_TOKEN the console answers only clients on this
host that no proxy forwarded (`kie_covers.worker.http_api.local_client`: loopback
``REMOTE_ADDR``, no ``Forwarded``/``X-Forwarded-For``/``X-Real-IP``). With the token
set, every client must log in at the console's form first: the token, compared in
constant time, buys a session cookie (`SESSION_COOKIE`: HttpOnly, SameSite=Strict,
path /console, `SESSION_S` seconds). The cookie holds its expiry and an HMAC of it
keyed by the token, so any ``covers web`` process knows it and changing the token
ends every session. COVERS_API_TOKEN is not accepted here: an app that may queue
covers must not thereby be able to forget them.

**Actions** (every POST but the login) carry CSRF proof, double-submit: the page's
script copies the `CSRF_COOKIE` cookie (random, SameSite=Strict, set with the page)
into the `CSRF_HEADER` header; the two must match (constant time). Another site can
neither read that cookie nor send a custom header without a CORS preflight, which
the console never grants. An ``Origin`` header, when present, must be the console's
own. Each answer also carries `security_headers`: a strict Content-Security-Policy
(no inline script or style, nothing from elsewhere but images).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from kie_covers.config import Settings
from kie_covers.worker.http_api import local_client

#: The session cookie's name (with COVERS_CONSOLE_TOKEN set).
SESSION_COOKIE = "covers_console"
#: The CSRF cookie's name; the page's script sends its value in `CSRF_HEADER`.
CSRF_COOKIE = "covers_csrf"
#: The header actions carry the CSRF cookie's value in (WSGI environ name).
CSRF_HEADER = "HTTP_X_CSRF_TOKEN"
#: Seconds a login lasts.
SESSION_S = 12 * 3600
#: Where the console's cookies are sent.
COOKIE_PATH = "/console"


def cookies(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request's cookies by name (empty when the header is malformed)."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(str(environ.get("HTTP_COOKIE", "")))
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _signature(token: str, expires: int) -> str:
    message = f"covers-console-session:{expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def token_matches(settings: Settings, given: str) -> bool:
    """True if `given` is COVERS_CONSOLE_TOKEN (constant time); False when unset."""
    token = settings.console_token
    return token is not None and _same(given.strip(), token.reveal())


def new_session(settings: Settings, now: float | None = None) -> str:
    """A session cookie's value: ``<expiry unix s>.<HMAC of it keyed by the token>``."""
    token = settings.console_token
    if token is None:
        raise ValueError("no COVERS_CONSOLE_TOKEN: the console has no sessions")
    expires = int((time.time() if now is None else now) + SESSION_S)
    return f"{expires}.{_signature(token.reveal(), expires)}"


def session_valid(settings: Settings, value: str, now: float | None = None) -> bool:
    """True if `value` is a session cookie this token made and it has not expired."""
    token = settings.console_token
    expires_text, _, signature = value.partition(".")
    if token is None or not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return False
    return _same(signature, _signature(token.reveal(), expires))


def access(settings: Settings, environ: Mapping[str, Any]) -> str:
    """What this client may do: ``ok``; ``login`` (token set, no valid session: show
    the login form); ``forbidden`` (no token set and not a local client)."""
    if settings.console_token is None:
        return "ok" if local_client(environ) else "forbidden"
    session = cookies(environ).get(SESSION_COOKIE, "")
    return "ok" if session_valid(settings, session) else "login"


def origin_ok(environ: Mapping[str, Any]) -> bool:
    """True if the request has no ``Origin`` header or names this console's own
    (scheme and ``Host``); ``null`` (a sandboxed or privacy-stripped origin) is refused."""
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    host = str(environ.get("HTTP_HOST", ""))
    scheme = str(environ.get("wsgi.url_scheme", "http"))
    return bool(host) and str(origin) == f"{scheme}://{host}"


def csrf_ok(environ: Mapping[str, Any]) -> bool:
    """True if the CSRF header matches the CSRF cookie (both present; constant time) and
    the ``Origin``, if any, is ours."""
    cookie = cookies(environ).get(CSRF_COOKIE, "")
    header = str(environ.get(CSRF_HEADER, ""))
    return bool(cookie) and bool(header) and _same(header, cookie) and origin_ok(environ)


def new_csrf() -> str:
    """A fresh CSRF cookie value (32 random bytes, hex)."""
    return secrets.token_hex(32)


def cookie_header(name: str, value: str, environ: Mapping[str, Any], *, http_only: bool,
                  max_age: int | None = None) -> tuple[str, str]:
    """A ``Set-Cookie`` header: SameSite=Strict, path /console, Secure over https."""
    parts = [f"{name}={value}", f"Path={COOKIE_PATH}", "SameSite=Strict"]
    if http_only:
        parts.append("HttpOnly")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if environ.get("wsgi.url_scheme") == "https":
        parts.append("Secure")
    return "Set-Cookie", "; ".join(parts)


def image_sources(settings: Settings) -> str:
    """The CSP ``img-src`` list: this console and any https host (Kie's CDN); with
    COVERS_ALLOW_PRIVATE_TARGETS=1 (development, the stand-in) also http on loopback."""
    sources = "'self' https:"
    if settings.allow_private_targets:
        sources += " http://127.0.0.1:* http://localhost:*"
    return sources


def security_headers(settings: Settings) -> list[tuple[str, str]]:
    """Headers every console answer carries: the Content-Security-Policy (scripts,
    styles, fetches and forms only from the console itself; images as
    `image_sources`), no framing, no sniffing, no caching, and the referrer only to
    itself (``same-origin``: with ``no-referrer`` a browser sends ``Origin: null`` on the
    login form's POST, which `origin_ok` refuses)."""
    policy = ("default-src 'self'; script-src 'self'; style-src 'self'; "
              f"img-src {image_sources(settings)}; connect-src 'self'; form-action 'self'; "
              "frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
    return [("Content-Security-Policy", policy), ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"), ("Referrer-Policy", "same-origin"),
            ("Cache-Control", "no-store")]
