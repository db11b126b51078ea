"""The image downloader (`copy_one`) end to end, in process, against loopback servers.

Each test starts small HTTP servers on 127.0.0.1 or 127.0.0.2 (both loopback)
and calls `copy_one` directly. With ``allow_private=False`` (production) every
loopback target must be refused before a request is sent; redirects,
credentials and file types are tested with ``allow_private=True`` (the
development setting), since this machine has no public target to be allowed.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kie_covers.core.addresses import TargetRefused
from kie_covers.core.errors import ImageFault, ImageRefused
from kie_covers.runtime import outbound
from kie_covers.runtime.redis_server import free_port
from kie_covers.services import image_fetch
from kie_covers.services.image_fetch import MAX_REDIRECTS, sniff
from kie_covers.services.images import LocalStore, copy_one
from tests.services import serve_in_thread, stop_server


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_bytes() -> bytes:
    """A real 1x1 RGB PNG."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + _png_chunk(b"IEND", b""))


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64 + b"\xff\xd9"
WEBP = b"RIFF" + struct.pack("<I", 76) + b"WEBPVP8 " + b"\x00" * 64
HTML = b"<!doctype html><html><body>not an image</body></html>"


@dataclass
class Reply:
    """What a route answers: status, headers, body (Content-Length added unless told)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    length: bool = True


@dataclass
class Server:
    """A loopback HTTP server: `routes` maps a path (query included) to a reply or to a
    function of the request making one; `seen` keeps each request's path and headers."""

    host: str
    routes: dict[str, Reply | Callable[[str], Reply]] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.seen.append((self.path, dict(self.headers.items())))
            route = server.routes.get(self.path, Reply(404, body=b"no such path"))
            reply = route(self.path) if callable(route) else route
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.length:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start a server on the given loopback address (``127.0.0.1``, ``127.0.0.2``);
    with `tls` (a server-side context) it speaks https."""
    running: list[ThreadingHTTPServer] = []

    def start(host: str, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(host)
        http_server = ThreadingHTTPServer((host, 0), _handler(server))
        if tls is not None:
            http_server.socket = tls.wrap_socket(http_server.socket, server_side=True)
        server.port = http_server.server_address[1]
        serve_in_thread(http_server)
        running.append(http_server)
        return server

    yield start
    for http_server in running:
        stop_server(http_server)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(str(tmp_path / "store"))


def files_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def fetch(url: str, store: LocalStore, *, allow_private: bool, max_bytes: int = 1_000_000
          ) -> Any:
    return copy_one(url, store, "music", "job-0", max_bytes=max_bytes, timeout_s=2,
                    deadline=float("inf"), allow_private=allow_private)


# --- the address policy, with the development setting off (production) ---


@pytest.mark.parametrize("host", ["127.0.0.2", "127.0.0.1"])
def test_a_loopback_image_is_refused_in_production_before_any_request(
    serve: Callable[..., Server], store: LocalStore, tmp_path: Path, host: str
) -> None:
    server = serve(host)
    server.routes["/cover.png?token=s3cr3t"] = Reply(body=png_bytes(),
                                                     headers={"Content-Type": "image/png"})
    with pytest.raises(ImageRefused, match=f"{host} is a loopback address") as refused:
        fetch(server.url("/cover.png?token=s3cr3t"), store, allow_private=False)
    # The reason names the host, never the URL's query.
    assert "s3cr3t" not in str(refused.value) and "cover.png" not in str(refused.value)
    assert server.seen == []
    assert files_in(tmp_path) == []


def test_a_host_name_is_judged_by_the_addresses_it_resolves_to(
    serve: Callable[..., Server], store: LocalStore
) -> None:
    server = serve("127.0.0.1")
    server.routes["/cover.png"] = Reply(body=png_bytes())
    with pytest.raises(ImageRefused, match=r"host 'localhost': refused: .* is a loopback"):
        fetch(f"http://localhost:{server.port}/cover.png", store, allow_private=False)
    assert server.seen == []


def test_the_same_image_is_fetched_once_the_development_setting_is_on(
    serve: Callable[..., Server], store: LocalStore
) -> None:
    server = serve("127.0.0.2")
    server.routes["/cover.png"] = Reply(body=png_bytes(), headers={"Content-Type": "image/png"})
    image = fetch(server.url("/cover.png"), store, allow_private=True)
    assert image.content_type == "image/png" and image.location.endswith("/music/job-0.png")
    # The Host header names the URL's host, as for any client.
    assert server.seen[0][1]["Host"] == f"127.0.0.2:{server.port}"


# --- redirects (development setting on: this machine has nothing public) ---


def test_a_redirect_to_another_loopback_server_is_followed(
    serve: Callable[..., Server], store: LocalStore, tmp_path: Path
) -> None:
    first, second = serve("127.0.0.1"), serve("127.0.0.2")
    first.routes["/start"] = Reply(302, {"Location": second.url("/cover.png")})
    second.routes["/cover.png"] = Reply(body=png_bytes(), headers={"Content-Type": "image/png"})
    image = fetch(first.url("/start"), store, allow_private=True)
    assert image.url == first.url("/start")
    assert Path(image.location).read_bytes() == png_bytes()
    assert image.sha256 == hashlib.sha256(png_bytes()).hexdigest()
    assert [path for path, _ in first.seen] == ["/start"]
    assert [path for path, _ in second.seen] == ["/cover.png"]
    assert second.seen[0][1]["Host"] == f"127.0.0.2:{second.port}"
    assert files_in(tmp_path) == [Path(image.location)]


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_every_redirect_status_is_followed_with_a_relative_location(
    serve: Callable[..., Server], store: LocalStore, status: int
) -> None:
    server = serve("127.0.0.1")
    server.routes["/start"] = Reply(status, {"Location": "/cover.png"})
    server.routes["/cover.png"] = Reply(body=png_bytes())
    assert fetch(server.url("/start"), store, allow_private=True).content_type == "image/png"


def test_the_redirect_cap_is_followed_exactly_and_one_more_is_refused(
    serve: Callable[..., Server], store: LocalStore, tmp_path: Path
) -> None:
    server = serve("127.0.0.1")

    def hop(path: str) -> Reply:
        n = int(path.rsplit("/", 1)[1])
        return Reply(302, {"Location": f"/hop/{n + 1}"})

    for n in range(20):
        server.routes[f"/hop/{n}"] = hop
    server.routes[f"/hop/{MAX_REDIRECTS}"] = Reply(body=png_bytes())
    # Exactly MAX_REDIRECTS redirects: fetched
    assert fetch(server.url("/hop/0"), store, allow_private=True).bytes == len(png_bytes())
    # One more: refused, after MAX_REDIRECTS + 1 requests and no file
    server.seen.clear()
    with pytest.raises(ImageRefused, match=f"more than {MAX_REDIRECTS} redirects"):
        copy_one(server.url("/hop/10"), store, "music", "job-1", max_bytes=1_000_000,
                 timeout_s=2, deadline=float("inf"), allow_private=True)
    assert len(server.seen) == MAX_REDIRECTS + 1
    assert [p.name for p in files_in(tmp_path)] == ["job-0.png"]


def test_a_redirect_to_a_url_with_user_info_is_refused_and_never_followed(
    serve: Callable[..., Server], store: LocalStore
) -> None:
    server = serve("127.0.0.1")
    server.routes["/start"] = Reply(302, {
        "Location": f"http://user:pa55word@127.0.0.1:{server.port}/cover.png"})
    server.routes["/cover.png"] = Reply(body=png_bytes())
    with pytest.raises(ImageRefused, match=r"redirect refused: .*user info") as refused:
        fetch(server.url("/start"), store, allow_private=True)
    assert "pa55word" not in str(refused.value)
    assert [path for path, _ in server.seen] == ["/start"]


def test_a_url_with_user_info_is_refused_without_a_request(
    serve: Callable[..., Server], store: LocalStore
) -> None:
    server = serve("127.0.0.1")
    server.routes["/cover.png"] = Reply(body=png_bytes())
    for netloc in (f"user:pa55word@127.0.0.1:{server.port}", f"user@127.0.0.1:{server.port}"):
        with pytest.raises(ImageRefused, match="user info") as refused:
            fetch(f"http://{netloc}/cover.png", store, allow_private=True)
        assert "pa55word" not in str(refused.value)
    assert server.seen == []
    # And no request ever carries credentials of any kind.
    fetch(server.url("/cover.png"), store, allow_private=True)
    assert "Authorization" not in server.seen[0][1]


def test_each_redirect_hop_is_checked_against_the_address_policy(
    serve: Callable[..., Server], store: LocalStore
) -> None:
    # The unspecified address is refused even in development; the check runs before
    # any connection, so nothing is sent there.
    server = serve("127.0.0.1")
    server.routes["/start"] = Reply(302, {"Location": f"http://0.0.0.0:{server.port}/x.png"})
    with pytest.raises(ImageRefused, match=r"0\.0\.0\.0 is an unspecified address"):
        fetch(server.url("/start"), store, allow_private=True)
    assert [path for path, _ in server.seen] == ["/start"]


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x.png",
                                      "gopher://127.0.0.1:70/_x"])
def test_a_redirect_off_http_is_refused(
    serve: Callable[..., Server], store: LocalStore, location: str
) -> None:
    server = serve("127.0.0.1")
    server.routes["/start"] = Reply(302, {"Location": location})
    with pytest.raises(ImageRefused, match="redirect refused: not an http"):
        fetch(server.url("/start"), store, allow_private=True)


# --- what the file is: its first bytes, not its Content-Type ---


def test_html_served_as_image_png_is_refused_without_a_file(
    serve: Callable[..., Server], store: LocalStore, tmp_path: Path
) -> None:
    server = serve("127.0.0.1")
    server.routes["/cover.png"] = Reply(body=HTML, headers={"Content-Type": "image/png"})
    with pytest.raises(ImageRefused, match=r"not a PNG, JPEG or WebP .*'image/png'"):
        fetch(server.url("/cover.png"), store, allow_private=True)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(("body", "served_as", "kind", "ext"), [
    (png_bytes(), "application/octet-stream", "image/png", "png"),
    (JPEG, "image/png", "image/jpeg", "jpeg"),
    (WEBP, None, "image/webp", "webp"),
])
def test_the_type_and_extension_come_from_the_first_bytes(
    serve: Callable[..., Server], store: LocalStore, tmp_path: Path,
    body: bytes, served_as: str | None, kind: str, ext: str
) -> None:
    server = serve("127.0.0.1")
    headers = {"Content-Type": served_as} if served_as else {}
    server.routes["/cover"] = Reply(body=body, headers=headers)
    image = fetch(server.url("/cover"), store, allow_private=True)
    assert image.content_type == kind
    assert image.location.endswith(f"/music/job-0.{ext}")
    assert Path(image.location).read_bytes() == body
    assert image.sha256 == hashlib.sha256(body).hexdigest() and image.bytes == len(body)
    assert files_in(tmp_path) == [Path(image.location)]


def test_sniff_tells_the_kept_types_apart_and_nothing_else() -> None:
    assert sniff(png_bytes()) == "image/png"
    assert sniff(JPEG) == "image/jpeg"
    assert sniff(WEBP) == "image/webp"
    for other in (HTML, b"", b"\x89PN", b"RIFF\x00\x00\x00\x00WAVE", b"GIF89a", b"%PDF-1.7"):
        assert sniff(other) is None


# --- streaming, size and retry semantics kept ---


def test_an_image_without_content_length_streams_until_the_connection_closes(
    serve: Callable[..., Server], store: LocalStore
) -> None:
    server = serve("127.0.0.1")
    body = png_bytes() + b"\x00" * 200_000  # several read chunks
    server.routes["/cover.png"] = Reply(body=body, length=False)
    image = fetch(server.url("/cover.png"), store, allow_private=True)
    assert image.bytes == len(body) and Path(image.location).read_bytes() == body


def test_size_over_the_limit_is_refused_declared_or_counted(
    serve: Callable[..., Server], store: LocalStore, tmp_path: Path
) -> None:
    server = serve("127.0.0.1")
    server.routes["/declared"] = Reply(body=png_bytes())
    server.routes["/counted"] = Reply(body=png_bytes() + b"\x00" * 100_000, length=False)
    with pytest.raises(ImageRefused, match=r"is over COVERS_IMAGE_MAX_BYTES \(50\)"):
        fetch(server.url("/declared"), store, allow_private=True, max_bytes=50)
    with pytest.raises(ImageRefused, match=r"over COVERS_IMAGE_MAX_BYTES \(1000 bytes\)"):
        fetch(server.url("/counted"), store, allow_private=True, max_bytes=1000)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(503, body=b"busy"), "HTTP 503"),
    (Reply(429, body=b"slow down"), "HTTP 429"),
    (Reply(200, body=b""), "empty answer"),
])
def test_server_faults_are_worth_another_try(
    serve: Callable[..., Server], store: LocalStore, tmp_path: Path,
    reply: Reply, reason: str
) -> None:
    server = serve("127.0.0.1")
    server.routes["/cover.png"] = reply
    with pytest.raises(ImageFault, match=reason):
        fetch(server.url("/cover.png"), store, allow_private=True)
    assert files_in(tmp_path) == []


def test_a_body_cut_short_of_its_content_length_is_a_fault_without_a_file(
    serve: Callable[..., Server], store: LocalStore, tmp_path: Path
) -> None:
    server = serve("127.0.0.1")
    body = png_bytes()
    server.routes["/cut"] = Reply(body=body, headers={"Content-Length": str(len(body) + 500)},
                                  length=False)
    server.routes["/tiny"] = Reply(body=b"\x89P", headers={"Content-Length": "500"},
                                   length=False)
    with pytest.raises(ImageFault, match=f"got {len(body)} of {len(body) + 500} bytes"):
        fetch(server.url("/cut"), store, allow_private=True)
    with pytest.raises(ImageFault, match="got 2 of 500 bytes"):
        fetch(server.url("/tiny"), store, allow_private=True)
    assert files_in(tmp_path) == []


def test_nobody_listening_is_a_fault(store: LocalStore) -> None:
    with pytest.raises(ImageFault, match="network error"):
        fetch(f"http://127.0.0.1:{free_port()}/cover.png", store, allow_private=True)


# --- names, several answers and https: resolver answers supplied by the test ---

#: Names this test resolves itself (all to loopback), so no real lookup is made.
FAKE_DNS = {"covers.test": ["127.0.0.1"], "other.test": ["127.0.0.1"],
            "mixed.test": ["127.0.0.1", "0.0.0.0"],
            "second.test": ["127.0.0.3", "127.0.0.1"]}


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = outbound.resolve

    def resolve(host: str, port: int) -> list[str]:
        if host == "unresolvable.test":
            raise TargetRefused("cannot resolve the host: Name or service not known")
        return list(FAKE_DNS[host]) if host in FAKE_DNS else real(host, port)

    monkeypatch.setattr(image_fetch, "resolve", resolve)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for ``covers.test`` only, and its key (by openssl)."""
    # Never skipped: openssl comes with Debian's base system (and Python's own ssl
    # module needs libssl); without the command this test fails and says why.
    assert shutil.which("openssl"), "the https tests need the openssl command"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=covers.test", "-addext", "subjectAltName=DNS:covers.test"],
        check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture
def https_server(serve: Callable[..., Server], certificate: tuple[Path, Path],
                 monkeypatch: pytest.MonkeyPatch, fake_dns: None
                 ) -> tuple[Server, list[str | None]]:
    """An https server on 127.0.0.1 (as ``covers.test``) that our client trusts, and
    the SNI names it was asked for."""
    cert, key = certificate
    names: list[str | None] = []
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)

    def record_sni(_sock: object, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_tls.sni_callback = record_sni
    monkeypatch.setattr(image_fetch, "_tls",
                        lambda: ssl.create_default_context(cafile=str(cert)))
    return serve("127.0.0.1", server_tls), names


def test_a_host_with_one_refused_answer_is_refused_as_a_whole(
    serve: Callable[..., Server], store: LocalStore, fake_dns: None
) -> None:
    server = serve("127.0.0.1")
    server.routes["/cover.png"] = Reply(body=png_bytes())
    with pytest.raises(ImageRefused, match=r"host 'mixed.test': .*unspecified"):
        fetch(f"http://mixed.test:{server.port}/cover.png", store, allow_private=True)
    assert server.seen == []


def test_a_name_that_does_not_resolve_is_a_fault_worth_another_try(
    store: LocalStore, fake_dns: None
) -> None:
    # The DNS may be down for a while; only a refused address is final.
    with pytest.raises(ImageFault, match=r"host 'unresolvable\.test': cannot resolve"):
        fetch("http://unresolvable.test/cover.png", store, allow_private=False)


def test_the_next_checked_answer_is_tried_when_the_first_does_not_answer(
    serve: Callable[..., Server], store: LocalStore, fake_dns: None
) -> None:
    server = serve("127.0.0.1")  # nobody listens on 127.0.0.3 at that port
    server.routes["/cover.png"] = Reply(body=png_bytes())
    image = fetch(f"http://second.test:{server.port}/cover.png", store, allow_private=True)
    assert image.content_type == "image/png"
    assert server.seen[0][1]["Host"] == f"second.test:{server.port}"


def test_https_checks_the_certificate_for_the_url_host_and_sends_it_as_sni(
    https_server: tuple[Server, list[str | None]], store: LocalStore
) -> None:
    server, names = https_server
    server.routes["/cover.png"] = Reply(body=png_bytes())
    image = fetch(f"https://covers.test:{server.port}/cover.png", store, allow_private=True)
    assert image.content_type == "image/png"
    assert names == ["covers.test"]
    assert server.seen[0][1]["Host"] == f"covers.test:{server.port}"


def test_https_to_a_host_the_certificate_is_not_for_fails_before_any_request(
    https_server: tuple[Server, list[str | None]], store: LocalStore
) -> None:
    # other.test resolves to the same address, but the certificate is for covers.test.
    server, _ = https_server
    server.routes["/cover.png"] = Reply(body=png_bytes())
    with pytest.raises(ImageFault, match=r"TLS error: .*[Hh]ostname mismatch"):
        fetch(f"https://other.test:{server.port}/cover.png", store, allow_private=True)
    assert server.seen == []


def test_a_redirect_from_https_down_to_http_is_refused(
    https_server: tuple[Server, list[str | None]], serve: Callable[..., Server],
    store: LocalStore
) -> None:
    server, _ = https_server
    plain = serve("127.0.0.1")
    plain.routes["/cover.png"] = Reply(body=png_bytes())
    server.routes["/start"] = Reply(302, {"Location": f"http://covers.test:{plain.port}/cover.png"})
    with pytest.raises(ImageRefused, match="from https down to http"):
        fetch(f"https://covers.test:{server.port}/start", store, allow_private=True)
    assert plain.seen == []
