"""The operations console's gate, in process (`kie_covers.worker.console`): who may see
it, the login, the CSRF proof on actions, the security headers, and that no secret is
shown. The WSGI app is called with environs as waitress builds them, with fake client
addresses: nothing is sent anywhere, least of all off 127.x. The browser tests are in
``test_console_browser.py``."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Mapping
from typing import Any

import pytest

from kie_covers.config import load_settings
from kie_covers.worker import console_auth as auth
from kie_covers.worker.console import Console, _shown

TOKEN = "console-" + secrets.token_hex(16)
CSRF = "c" * 64


def never_read() -> Mapping[str, Any]:
    raise AssertionError("the overview must not be read before the client is let in")


def console(**env: str) -> Console:
    return Console(load_settings(env), never_read)


def environ(method: str = "GET", path: str = "/console", *, remote: str = "127.0.0.1",
            body: bytes = b"", headers: Mapping[str, str] | None = None, **more: str
            ) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "REQUEST_URI": path,
        "REMOTE_ADDR": remote, "HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http",
        "CONTENT_LENGTH": str(len(body)) if body else "", "wsgi.input": io.BytesIO(body)}
    env.update(headers or {})
    env.update(more)
    return env


def call(app: Console, env: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.update(status=int(status.split(" ", 1)[0]), headers=headers)

    body = b"".join(app(env, start_response))
    return seen["status"], seen["headers"], body


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


@pytest.mark.parametrize("path", ["/console", "/console/jobs/abc", "/console/api/overview",
                                  "/console/static/console.js", "/console/login"])
@pytest.mark.parametrize("remote", ["203.0.113.7", "10.0.0.2", "192.168.1.5", "::ffff:10.1.2.3"])
def test_without_a_token_a_client_off_this_host_is_refused(path: str, remote: str) -> None:
    status, headers, _ = call(console(), environ(path=path, remote=remote))
    assert status == 403
    assert header(headers, "Content-Security-Policy")


@pytest.mark.parametrize("forwarded", ["HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR",
                                       "HTTP_X_REAL_IP"])
def test_without_a_token_a_forwarded_request_is_refused_even_from_loopback(
        forwarded: str) -> None:
    status, _, _ = call(console(), environ(path="/console/api/overview",
                                           headers={forwarded: "203.0.113.7"}))
    assert status == 403


def test_without_a_token_the_page_answers_loopback_with_a_strict_policy() -> None:
    status, headers, body = call(console(), environ())
    assert status == 200 and b"<title>kie-covers console</title>" in body
    policy = header(headers, "Content-Security-Policy")[0]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "img-src 'self' https:" in policy and "127.0.0.1" not in policy
    assert "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
    assert header(headers, "Referrer-Policy") == ["same-origin"]
    # The CSRF cookie comes with the page, readable by its script, SameSite=Strict.
    csrf = header(headers, "Set-Cookie")[0]
    assert csrf.startswith("covers_csrf=") and "SameSite=Strict" in csrf
    assert "HttpOnly" not in csrf and "Path=/console" in csrf
    # The page and its script hold no inline script or style (the policy forbids them).
    assert b"<script>" not in body and b"style=" not in body and b"onclick" not in body


def test_loopback_images_are_allowed_only_with_private_targets() -> None:
    _, headers, _ = call(console(COVERS_ALLOW_PRIVATE_TARGETS="1"), environ())
    assert "img-src 'self' https: http://127.0.0.1:*" in header(
        headers, "Content-Security-Policy")[0]


def test_with_a_token_every_client_logs_in_first_and_the_token_is_never_shown() -> None:
    app = console(COVERS_CONSOLE_TOKEN=TOKEN)
    seen: list[bytes] = []
    # Even loopback must log in: the page sends it to the form, the JSON answers 401.
    status, headers, _ = call(app, environ())
    assert status == 303 and header(headers, "Location") == ["/console/login"]
    status, _, body = call(app, environ(path="/console/api/overview", remote="203.0.113.7"))
    assert status == 401 and json.loads(body)["status"] == 401
    status, _, body = call(app, environ(path="/console/login", remote="203.0.113.7"))
    assert status == 200 and b'name="token"' in body and b'type="password"' in body
    seen.append(body)
    # A wrong token: back to the form, no session.
    form = b"token=wrong-" + TOKEN.encode()
    status, headers, body = call(app, environ("POST", "/console/login", body=form,
                                              remote="203.0.113.7"))
    assert status == 303 and header(headers, "Location") == ["/console/login?failed=1"]
    assert not header(headers, "Set-Cookie")
    # The right one: an HttpOnly, SameSite=Strict session cookie.
    status, headers, body = call(app, environ("POST", "/console/login", remote="203.0.113.7",
                                              body=b"token=" + TOKEN.encode()))
    assert status == 303 and header(headers, "Location") == ["/console"]
    cookie = header(headers, "Set-Cookie")[0]
    assert cookie.startswith(auth.SESSION_COOKIE + "=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Max-Age=" in cookie
    session = cookie.split(";", 1)[0]
    status, headers, body = call(app, environ(remote="203.0.113.7", HTTP_COOKIE=session))
    assert status == 200
    seen += [body, json.dumps(headers).encode(), session.encode()]
    assert all(TOKEN.encode() not in text for text in seen)


def test_a_login_posted_from_another_site_is_refused() -> None:
    app = console(COVERS_CONSOLE_TOKEN=TOKEN)
    status, headers, _ = call(app, environ("POST", "/console/login", body=b"token=" +
                                           TOKEN.encode(), HTTP_ORIGIN="https://evil.example"))
    assert status == 403 and not header(headers, "Set-Cookie")


def test_sessions_expire_and_cannot_be_forged() -> None:
    settings = load_settings({"COVERS_CONSOLE_TOKEN": TOKEN})
    session = auth.new_session(settings, now=1_000_000)
    assert auth.session_valid(settings, session, now=1_000_000 + 60)
    assert not auth.session_valid(settings, session, now=1_000_000 + auth.SESSION_S + 1)
    expires, signature = session.split(".")
    assert not auth.session_valid(settings, f"{int(expires) + 999}.{signature}", now=1_000_000)
    other = load_settings({"COVERS_CONSOLE_TOKEN": TOKEN + "x"})
    assert not auth.session_valid(other, session, now=1_000_000 + 60)
    assert not auth.session_valid(settings, "", now=0)
    assert not auth.session_valid(load_settings({}), session, now=1_000_000)


@pytest.mark.parametrize(("cookie", "header_value", "origin"), [
    (None, None, None),                      # neither
    (CSRF, None, None),                      # the cookie alone (what a forged form sends)
    (None, CSRF, None),                      # the header alone
    (CSRF, "d" * 64, None),                  # a header that is not the cookie
    (CSRF, CSRF, "https://evil.example"),    # both, from another site's page
    (CSRF, CSRF, "null"),                    # a sandboxed origin
])
def test_an_action_without_csrf_proof_is_refused_403(cookie: str | None,
                                                     header_value: str | None,
                                                     origin: str | None) -> None:
    headers: dict[str, str] = {}
    if cookie:
        headers["HTTP_COOKIE"] = f"{auth.CSRF_COOKIE}={cookie}"
    if header_value:
        headers["HTTP_X_CSRF_TOKEN"] = header_value
    if origin:
        headers["HTTP_ORIGIN"] = origin
    body = json.dumps({"jobIds": ["not valid id !"]}).encode()
    for path in ("/console/api/retry", "/console/api/forget"):
        status, _, answer = call(console(), environ("POST", path, body=body, headers=headers))
        assert status == 403, path
        assert "CSRF" in json.loads(answer)["detail"]
    status, _, _ = call(console(), environ("POST", "/console/logout", headers=headers))
    assert status == 403


def test_an_action_with_csrf_proof_gets_past_the_gate() -> None:
    # A body naming no valid job id: 422 from the handler shows the gate let it through
    # (without touching Redis).
    body = json.dumps({"jobIds": ["not valid id !"]}).encode()
    status, _, answer = call(console(), environ(
        "POST", "/console/api/retry", body=body, HTTP_COOKIE=f"{auth.CSRF_COOKIE}={CSRF}",
        HTTP_X_CSRF_TOKEN=CSRF, HTTP_ORIGIN="http://127.0.0.1:8000"))
    assert status == 422 and json.loads(answer)["errors"][0]["field"] == "jobIds"


def test_reads_refuse_bad_filters_and_unknown_paths_before_redis() -> None:
    app = console()
    env = environ(path="/console/api/failures")
    env["QUERY_STRING"] = "kind=Bad!&code=x&since=yesterday&limit=0"
    status, _, body = call(app, env)
    assert status == 422
    assert sorted(e["field"] for e in json.loads(body)["errors"]) == [
        "code", "kind", "limit", "since"]
    assert call(app, environ(path="/console/api/nope"))[0] == 404
    assert call(app, environ("DELETE", "/console/api/retry"))[0] == 405
    assert call(app, environ(path="/console/nope"))[0] == 404
    # Only the CSS and the script are static files; the pages have their own routes.
    assert call(app, environ(path="/console/static/index.html"))[0] == 404
    assert call(app, environ(path="/console/static/console.css"))[0] == 200


def test_a_shown_record_hides_the_apps_callback_query_and_credentials() -> None:
    shown = _shown({"job_id": "j", "callback_url": "https://u:pw@app.example/cb?key=s3cret#x"})
    assert shown["callback_url"] == "https://app.example/cb?…"
    assert _shown({"callback_url": "https://app.example/cb"})["callback_url"] == \
        "https://app.example/cb"
