"""Fetching the URLs clients name: off by default, public hosts only, each redirect checked, a deadline.

A real HTTP server on 127.0.0.1 stands in for a service the server guards: every test that is refused also
checks that it received no request. The end-to-end tests go through a real stack (remote::openai-compat
in front of a small recording upstream) and its HTTP server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from support import free_port, uvicorn_serving

from llama_stack.apis.errors import BadRequestError
from llama_stack.providers.utils import url_reader
from llama_stack.providers.utils.datasets import DatasetReader, DatasetSourceConfig
from llama_stack.providers.utils.inference.attachments import AttachmentConfig
from llama_stack.providers.utils.url_reader import URLReader, URLSourceConfig, non_public_kind
from llama_stack.resolver import Stack
from llama_stack.server import create_app

INSIDE = "INSIDE-SERVICE-SECRET the loopback service's answer"
TEXT = "Paris is the capital of France."
LOCAL = {"allow_http": True, "allowed_hosts": ["127.0.0.1"]}


# ------------------------------------------------------------------------------------- a guarded service


@dataclass
class Service:
    """A local HTTP server standing in for what the server guards; it keeps every request it gets."""

    port: int
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Host header)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _handler(service: Service, release: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in {"Content-Type": "text/plain", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            service.requests.append((self.path, self.headers.get("Host")))
            path, _, query = self.path.partition("?")
            if path == "/notes.txt":
                self._send(200, TEXT.encode())
            elif path == "/secret":
                self._send(200, INSIDE.encode())
            elif path == "/status/500":
                self._send(500, INSIDE.encode())
            elif path == "/status/404":
                self._send(404, INSIDE.encode())
            elif path == "/to":  # /to?<url>: a redirect there
                self._send(302, b"", {"Location": query})
            elif path == "/loop":
                self._send(302, b"", {"Location": "/loop"})
            elif path == "/reset":  # the connection dropped with a RST, no answer
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
            elif path == "/stall":  # headers, then nothing until the test ends
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.flush()
                release.wait(30)
            elif path == "/trickle":  # a byte every 50 ms: no read ever waits long, the whole never ends
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                with contextlib.suppress(OSError):  # the client hangs up
                    while not release.wait(0.05):
                        self.wfile.write(b"x")
                        self.wfile.flush()
            else:
                self._send(404, b"not found")

    return Handler


@contextlib.contextmanager
def running_service(host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> Iterator[Service]:
    service = Service(port=0)
    release = threading.Event()
    httpd = ThreadingHTTPServer((host, 0), _handler(service, release))
    httpd.daemon_threads = True
    if ssl_context is not None:
        httpd.socket = ssl_context.wrap_socket(httpd.socket, server_side=True)
    service.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def service_server() -> Iterator[Service]:
    with running_service() as service:
        yield service


@pytest.fixture
def service(service_server: Service) -> Service:
    service_server.requests.clear()
    return service_server


def reader(**config: Any) -> URLReader:
    return URLReader(URLSourceConfig(**config), noun="attachment", block="attachments")


async def refusal(url: str, **config: Any) -> str:
    with pytest.raises(BadRequestError) as caught:
        await reader(**config).read(url, "dialog.message.content")
    assert caught.value.status == 400
    assert caught.value.details[0]["loc"] == "dialog.message.content"
    message = caught.value.message
    assert message.startswith("dialog.message.content: ")
    assert INSIDE not in message
    return message


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------ the policy


async def test_remote_urls_are_refused_by_default_without_a_request(service):
    message = await refusal(f"{service.url}/notes.txt")
    assert "refused" in message and "disabled on this server" in message and "attachments.allow_http" in message
    assert service.requests == []
    assert URLSourceConfig().allow_http is False
    assert AttachmentConfig().allow_http is False and DatasetSourceConfig().allow_http is False


async def test_enabled_but_not_allow_listed_loopback_is_refused_without_a_request(service):
    message = await refusal(f"{service.url}/secret", allow_http=True)
    assert "refused to fetch" in message and "127.0.0.1 is a loopback address" in message
    assert "attachments.allowed_hosts" in message
    assert service.requests == []


async def test_an_allow_listed_host_is_served_with_its_own_host_header(service):
    data, mime_type = await reader(**LOCAL).read(f"{service.url}/notes.txt", "content")
    assert data == TEXT.encode() and mime_type == "text/plain"
    assert service.requests == [("/notes.txt", f"127.0.0.1:{service.port}")]


async def test_a_name_resolving_to_loopback_is_refused_even_when_its_address_is_allowed(service):
    # allowed_hosts names hosts as URLs write them: 127.0.0.1 being allowed does not let `localhost` in.
    message = await refusal(f"http://localhost:{service.port}/secret", **LOCAL)
    assert "'localhost' does not resolve to public addresses only" in message
    assert service.requests == []


@pytest.mark.parametrize(
    "host",
    [
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "[::]",
        "0.0.0.0",
        "2130706433",
        "127.1",
    ],
)
async def test_loopback_in_other_spellings_is_refused(service, host):
    message = await refusal(f"http://{host}:{service.port}/secret", allow_http=True)
    assert "refused to fetch" in message
    assert service.requests == []


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # clouds' metadata endpoint
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_which_addresses_are_not_public(address, kind):
    assert non_public_kind(ipaddress.ip_address(address)) == kind


async def test_every_resolved_address_is_checked(service, monkeypatch):
    """A name that resolves to a public address and a private one is refused: any of them could be used."""
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "mixed.example":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    message = await refusal(f"http://mixed.example:{service.port}/secret", allow_http=True)
    assert "'mixed.example' does not resolve to public addresses only" in message
    assert service.requests == []


async def test_an_unknown_name_is_refused_as_a_private_one_is():
    # Otherwise the answers would tell which internal names exist.
    unknown = await refusal("http://no-such-host.invalid/x", allow_http=True)
    assert "'no-such-host.invalid' does not resolve to public addresses only" in unknown


def test_allowed_hosts_are_hosts():
    config = URLSourceConfig(allowed_hosts=["127.0.0.1", "[::1]", "Files.Internal.Example."])
    assert config.allowed_hosts == ["127.0.0.1", "::1", "files.internal.example"]
    for wrong in ["http://files.example", "files.example:8080", "files.example/path", "two words"]:
        with pytest.raises(ValidationError, match="not a host name or IP address"):
            URLSourceConfig(allowed_hosts=[wrong])
    assert all(field.description for field in URLSourceConfig.model_fields.values())


# ----------------------------------------------------------------------------------------------- redirects


async def test_a_redirect_within_the_allowed_host_is_followed(service):
    data, _ = await reader(**LOCAL).read(f"{service.url}/to?/notes.txt", "content")
    assert data == TEXT.encode()
    assert [path for path, _ in service.requests] == ["/to?/notes.txt", "/notes.txt"]


async def test_a_redirect_to_an_address_not_allowed_is_refused_at_the_hop(service):
    with running_service() as target:
        for location in [f"http://localhost:{target.port}/secret", f"http://[::ffff:127.0.0.1]:{target.port}/secret"]:
            url = f"{service.url}/to?{location}"
            message = await refusal(url, **LOCAL)
            assert "redirect 1 leads to an address this server does not fetch from" in message
            assert str(target.port) not in message.replace(url, "<url>")  # where it pointed is not told
        assert target.requests == []


async def test_a_redirect_to_another_scheme_is_refused(service, tmp_path):
    (tmp_path / "a.txt").write_text("file text")
    message = await refusal(f"{service.url}/to?{(tmp_path / 'a.txt').as_uri()}", **LOCAL, file_roots=[tmp_path])
    assert "redirect 1 leads to a file: URL" in message


async def test_redirects_are_counted(service):
    message = await refusal(f"{service.url}/loop", **LOCAL, max_redirects=3)
    assert "redirects more than 3 times (attachments.max_redirects)" in message
    assert len(service.requests) == 4


# ------------------------------------------------------------------------------------- deadline, failures


async def test_the_deadline_bounds_a_server_that_trickles(service):
    started = time.monotonic()
    message = await refusal(f"{service.url}/trickle", **LOCAL, http_timeout_s=5, http_deadline_s=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"a trickling server held the fetch {elapsed:.1f} s past a 0.5 s deadline"
    assert "failed" in message and "attachments.http_deadline_s" in message


async def test_every_failure_reads_the_same_and_carries_no_answer(service):
    """A closed port, an error status (with a body), a reset and a timeout: one text, nothing inside."""
    urls = [
        f"http://127.0.0.1:{closed_port()}/x",
        f"{service.url}/status/500",
        f"{service.url}/status/404",
        f"{service.url}/reset",
        f"{service.url}/stall",
    ]
    messages = {}
    for url in urls:
        message = await refusal(url, **LOCAL, http_timeout_s=0.3)
        messages[url] = message.replace(url, "<url>")
    assert len(set(messages.values())) == 1, messages
    (text,) = set(messages.values())
    assert text.startswith("dialog.message.content: fetching <url> failed")
    for detail in ["500", "404", "refused", "Connect", "Timeout", "reset", INSIDE]:
        assert detail not in text


async def test_an_invalid_url_is_a_400():
    assert "not a valid http(s):// URL: Invalid port: 'port'" in await refusal("http://host:port/x", allow_http=True)
    assert "not a valid http(s):// URL: it names no host" in await refusal("http:///x", allow_http=True)


async def test_https_goes_to_the_checked_address_with_the_name_for_tls(monkeypatch):
    """The connection is made to the address resolved once, here; TLS still names (and verifies) the host."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("files.example").configure_cert(server_context)
    seen_names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, context: seen_names.append(name)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    resolved: list[str] = []
    real_resolve = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("files.example", "other.example"):
            resolved.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real_resolve(host, port, *args, **kwargs)

    real_kind = url_reader.non_public_kind
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    # The local server plays a public one: its address passes the check.
    monkeypatch.setattr(url_reader, "non_public_kind", lambda a: None if str(a) == "127.0.0.1" else real_kind(a))
    with running_service(ssl_context=server_context) as tls:
        https = URLReader(
            URLSourceConfig(allow_http=True),
            noun="attachment",
            block="attachments",
            transport=httpx.AsyncHTTPTransport(verify=client_context),
        )
        data, _ = await https.read(f"https://files.example:{tls.port}/notes.txt", "content")
        assert data == TEXT.encode()
        assert tls.requests == [("/notes.txt", f"files.example:{tls.port}")]
        assert seen_names == ["files.example"]
        assert resolved == ["files.example"]  # once: nothing resolved it again to connect

        # The certificate is checked against the URL's host, not the address connected to.
        with pytest.raises(BadRequestError, match="failed"):
            await https.read(f"https://other.example:{tls.port}/notes.txt", "content")
        assert len(tls.requests) == 1


async def test_the_size_limit_still_holds(service):
    message = await refusal(f"{service.url}/notes.txt", **LOCAL, max_bytes=10)
    assert f"({len(TEXT)} bytes) is larger than the 10 bytes allowed (attachments.max_bytes)" in message


async def test_datasets_follow_the_same_policy(service):
    dataset = DatasetReader(DatasetSourceConfig(allow_http=True), provider="trainer")
    with pytest.raises(
        BadRequestError,
        match=r"dataset.content_url: refused to fetch .*127.0.0.1 is a loopback address.*datasets.allowed_hosts",
    ):
        await dataset.read(f"{service.url}/secret", "dataset.content_url")
    with pytest.raises(BadRequestError, match=r"disabled on this server.*datasets\.allow_http"):
        await DatasetReader(DatasetSourceConfig()).read(f"{service.url}/secret", "dataset.content_url")
    assert service.requests == []


# --------------------------------------------------------------------------------------------- file://


async def test_a_file_outside_the_roots_reads_the_same_whether_or_not_it_exists(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.txt").write_text(TEXT)
    (tmp_path / "secret.txt").write_text(INSIDE)
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    files = {"file_roots": [root]}

    outside = {
        "existing": tmp_path / "secret.txt",
        "missing": tmp_path / "missing.txt",
        "missing folder": tmp_path / "nowhere" / "missing.txt",
        "through ..": root / ".." / "secret.txt",
        "missing through ..": root / ".." / "missing.txt",
        "symlink out": root / "link.txt",
        "dangling symlink out": root / "dangling.txt",
    }
    texts = set()
    for path in outside.values():
        message = await refusal(f"file://{path}", **files)
        assert "refused" in message
        texts.add(message.replace(repr(str(path)), "<path>"))
    assert len(texts) == 1, texts
    assert "exist" not in texts.pop()

    assert await reader(**files).read((root / "inside.txt").as_uri(), "content") == (TEXT.encode(), None)
    assert "does not exist" in await refusal((root / "missing.txt").as_uri(), **files)


# ------------------------------------------------------------------------------- through a real server


@dataclass
class Upstream:
    """An OpenAI-compatible server that answers "ok" and keeps every prompt it is sent."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)


def upstream_app(upstream: Upstream) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        upstream.bodies.append(await request.json())
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@contextlib.asynccontextmanager
async def serving_stack(directory: Path, upstream: Upstream, attachments: dict[str, Any]) -> AsyncIterator[str]:
    """Our server, remote::openai-compat (with this attachments block) in front of the upstream."""
    path = directory / "dist.yaml"
    config = {"url": f"{upstream.url}/v1", "check_models": False, "max_retries": 0, "attachments": attachments}
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "name": "url-fetching",
                "apis": ["inference"],
                "providers": {
                    "inference": [
                        {"provider_id": "upstream", "provider_type": "remote::openai-compat", "config": config}
                    ]
                },
                "models": [{"model_id": "m", "provider_id": "upstream", "provider_model_id": "m"}],
                "storage": {"dir": str(directory / "state")},
                "server": {"port": free_port()},
            }
        )
    )
    stack = Stack.from_distribution(path)
    await stack.start()
    try:
        async with uvicorn_serving(create_app(stack)) as url:
            yield url
    finally:
        await stack.shutdown()


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    recorded = Upstream()
    async with uvicorn_serving(upstream_app(recorded)) as url:
        recorded.url = url
        yield recorded


async def chat_with_attachment(server: str, url: str) -> httpx.Response:
    body = {
        "model": "m",
        "dialog": {"message": {"role": "user", "content": ["Summarize:", {"url": url, "mime_type": "text/plain"}]}},
    }
    async with httpx.AsyncClient(base_url=server, timeout=30) as client:
        return await client.post("/inference/chat_completion", json=body)


@pytest.mark.parametrize(
    ("attachments", "expected"),
    [({}, "disabled on this server"), ({"allow_http": True}, "127.0.0.1 is a loopback address")],
)
async def test_a_chat_attachment_on_loopback_never_reaches_the_prompt(
    tmp_path, service, upstream, attachments, expected
):
    upstream.bodies.clear()
    async with serving_stack(tmp_path, upstream, attachments) as server:
        answer = await chat_with_attachment(server, f"{service.url}/secret")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["message"].startswith("dialog.message.content[1]: ") and expected in error["message"]
    assert INSIDE not in answer.text
    assert service.requests == [] and upstream.bodies == []


async def test_a_chat_attachment_from_an_allowed_host_is_inlined(tmp_path, service, upstream):
    """The same request with the host allow-listed: the text does reach the prompt (so the test above can fail)."""
    upstream.bodies.clear()
    async with serving_stack(tmp_path, upstream, LOCAL) as server:
        answer = await chat_with_attachment(server, f"{service.url}/secret")
    assert answer.status_code == 200, answer.text
    (body,) = upstream.bodies
    assert INSIDE in body["messages"][0]["content"]
    assert [path for path, _ in service.requests] == ["/secret"]
