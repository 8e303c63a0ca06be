"""Text attachments: data: URLs, files inside configured roots, and a real local HTTP server."""

from __future__ import annotations

import base64
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from llama_stack.apis.common import Attachment, Dialog
from llama_stack.apis.errors import BadRequestError
from llama_stack.providers.utils.inference.attachments import (
    AttachmentConfig,
    AttachmentInliner,
    InlinedAttachments,
    dialog_contents,
    is_text_mime_type,
)

TEXT = "Paris is the capital of France.\nIt is on the Seine."
# http(s):// is off by default and loopback refused: the tests' server on 127.0.0.1 must be allowed.
FROM_LOCAL_SERVER = {"allow_http": True, "allowed_hosts": ["127.0.0.1"]}
LOCAL = AttachmentConfig(**FROM_LOCAL_SERVER)


def att(url: str, mime_type: str = "text/plain") -> Attachment:
    return Attachment(url=url, mime_type=mime_type)


def data_url(text: str | bytes, mime: str = "text/plain") -> str:
    raw = text.encode() if isinstance(text, str) else text
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


async def inline_one(attachment: Attachment, config: AttachmentConfig | None = None, where: str = "content") -> str:
    inlined = await AttachmentInliner(config or AttachmentConfig()).fetch([(attachment, where)], model="m")
    return inlined.inline(attachment, where)


async def refused(
    attachment: Attachment, config: AttachmentConfig | None = None, where: str = "content"
) -> BadRequestError:
    with pytest.raises(BadRequestError) as error:
        await inline_one(attachment, config, where)
    assert error.value.status == 400
    assert error.value.message.startswith(f"{where}: ")
    assert error.value.details[0]["loc"] == where
    return error.value


# -- data: ------------------------------------------------------------------------------------------------


async def test_a_base64_data_url_is_inlined_with_a_header():
    assert (
        await inline_one(att(data_url(TEXT)))
        == f"[Attachment: data:text/plain (inline) (text/plain)]\n{TEXT}\n[End of attachment]"
    )


async def test_a_percent_encoded_data_url():
    url = "data:," + urllib.parse.quote("50% off, tonight!")
    assert "\n50% off, tonight!\n" in await inline_one(att(url))
    assert "\ncaf\u00e9\n" in await inline_one(att("data:text/plain;charset=latin-1,caf%E9", "text/plain"))


async def test_json_and_charsets():
    assert '\n{"a": 1}\n' in await inline_one(att(data_url('{"a": 1}', "application/json"), "application/json"))
    assert "\ncaf\u00e9\n" in await inline_one(
        att(data_url("caf\u00e9".encode("latin-1")), "text/plain; charset=latin-1")
    )
    assert (
        await inline_one(att(data_url("\ufeffbom")))
        == "[Attachment: data:text/plain (inline) (text/plain)]\nbom\n[End of attachment]"
    )


async def test_bad_data_urls():
    assert "base64" in (await refused(att("data:text/plain;base64,@@@not base64"))).message
    assert "comma" in (await refused(att("data:text/plain;base64"))).message
    assert "not valid utf-8 text" in (await refused(att(data_url(b"\xff\xfe\xfa")))).message
    assert "unknown charset" in (await refused(att(data_url("x"), "text/plain; charset=klingon"))).message


async def test_the_size_limit_applies_to_data_urls():
    config = AttachmentConfig(max_bytes=10)
    assert "\n0123456789\n" in await inline_one(att(data_url("0123456789")), config)
    for url in (data_url("0123456789A"), "data:,0123456789A"):
        assert (
            "larger" in (await refused(att(url), config)).message
            and "max_bytes" in (await refused(att(url), config)).message
        )


# -- what is not text -------------------------------------------------------------------------------------


async def test_an_image_is_refused_as_the_model_is_text_only():
    error = await refused(att("https://example.com/cat.png", "image/png"), where="dialog.message.content[1]")
    assert "image/png" in error.message and "model 'm' is text-only" in error.message
    # The data's own type counts too.
    error = await refused(att(data_url(b"\x89PNG", "image/png"), "text/plain"))
    assert "image/png" in error.message and "text-only" in error.message


@pytest.mark.parametrize("mime", ["application/pdf", "application/octet-stream", "audio/wav", "video/mp4"])
async def test_binary_attachments_are_refused(mime):
    error = await refused(att(data_url(b"%PDF-1.4"), mime))
    assert mime in error.message and "text-only" in error.message


def test_text_mime_types():
    for mime in (
        "text/plain",
        "text/markdown; charset=utf-8",
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/yaml",
    ):
        assert is_text_mime_type(mime), mime
    for mime in ("image/png", "application/pdf", "application/octet-stream", ""):
        assert not is_text_mime_type(mime), mime


async def test_an_unknown_scheme_is_refused():
    # The contract's URL pattern admits only http(s), file and data; a provider still checks.
    attachment = Attachment.model_construct(url="ftp://example.com/a.txt", mime_type="text/plain")
    assert "scheme 'ftp'" in (await refused(attachment)).message


# -- file:// ----------------------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path):
    inside = tmp_path / "docs"
    inside.mkdir()
    (inside / "notes.txt").write_text(TEXT)
    (inside / "sub").mkdir()
    (inside / "sub" / "deep file.md").write_text("# Deep")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (inside / "link.txt").symlink_to(outside)
    return inside, outside


async def test_a_file_inside_a_root(roots):
    inside, _ = roots
    config = AttachmentConfig(file_roots=[inside])
    text = await inline_one(att((inside / "notes.txt").as_uri()), config)
    assert text == f"[Attachment: {(inside / 'notes.txt').as_uri()} (text/plain)]\n{TEXT}\n[End of attachment]"
    assert "\n# Deep\n" in await inline_one(att((inside / "sub" / "deep file.md").as_uri(), "text/markdown"), config)
    assert "\n# Deep\n" in await inline_one(
        att("file://localhost" + urllib.parse.quote(str(inside / "sub" / "deep file.md"))), config
    )


async def test_files_outside_the_roots_are_refused(roots):
    inside, outside = roots
    config = AttachmentConfig(file_roots=[inside])
    for url in (
        outside.as_uri(),
        "file://" + str(inside) + "/../secret.txt",  # a .. escape
        (inside / "link.txt").as_uri(),  # a symlink escape
    ):
        assert "outside the folders" in (await refused(att(url), config)).message, url


async def test_file_errors(roots, tmp_path):
    inside, _ = roots
    config = AttachmentConfig(file_roots=[inside])
    assert "no attachments.file_roots" in (await refused(att((inside / "notes.txt").as_uri()))).message
    assert "does not exist" in (await refused(att((inside / "missing.txt").as_uri()), config)).message
    assert "not a regular file" in (await refused(att((inside / "sub").as_uri()), config)).message
    assert "local file" in (await refused(att("file://example.com/etc/passwd"), config)).message
    assert (
        "larger"
        in (
            await refused(att((inside / "notes.txt").as_uri()), AttachmentConfig(file_roots=[inside], max_bytes=5))
        ).message
    )


async def test_a_root_reached_through_a_symlink(tmp_path, roots):
    inside, _ = roots
    alias = tmp_path / "alias"
    alias.symlink_to(inside)
    assert TEXT in await inline_one(att((alias / "notes.txt").as_uri()), AttachmentConfig(file_roots=[alias]))


# -- http(s):// against a real server -----------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body: bytes, content_type="text/plain; charset=utf-8", length=True, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in headers:
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if length:
            self.wfile.write(body)

    def do_GET(self):
        path = self.path
        if path == "/notes.txt":
            self._send(200, TEXT.encode())
        elif path == "/data.json":
            self._send(200, b'{"city": "Paris"}', "application/json")
        elif path == "/octet":
            self._send(200, TEXT.encode(), "application/octet-stream")
        elif path == "/redirect":
            self._send(302, b"", headers=[("Location", "/notes.txt")])
        elif path == "/big":
            self._send(200, b"x" * 5000)
        elif path == "/cat.png":
            self._send(200, b"\x89PNG\r\n\x1a\n", "image/png")
        elif path == "/endless":
            # Chunked and without end: only a reader that stops at its limit gets an answer.
            self._send(200, b"", length=False)
            try:
                while not self.release.is_set():
                    self.wfile.write(b"400\r\n" + b"y" * 1024 + b"\r\n")
            except OSError:  # the client hung up
                pass
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"abc")
            self.wfile.flush()
            self.release.wait(30)
        else:
            self._send(404, b"not found")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


async def test_http_text_and_json(server):
    assert (
        await inline_one(att(f"{server}/notes.txt"), LOCAL)
        == f"[Attachment: {server}/notes.txt (text/plain)]\n{TEXT}\n[End of attachment]"
    )
    assert '\n{"city": "Paris"}\n' in await inline_one(att(f"{server}/data.json", "application/json"), LOCAL)
    assert TEXT in await inline_one(
        att(f"{server}/octet"), LOCAL
    )  # the declared type decides, unless the server says image
    assert TEXT in await inline_one(att(f"{server}/redirect"), LOCAL)


async def test_http_errors(server):
    assert "failed" in (await refused(att(f"{server}/missing.txt"), LOCAL)).message
    assert "text-only" in (await refused(att(f"{server}/cat.png"), LOCAL)).message
    assert (
        "5000 bytes"
        in (await refused(att(f"{server}/big"), AttachmentConfig(max_bytes=4096, **FROM_LOCAL_SERVER))).message
    )
    closed = f"http://127.0.0.1:{_closed_port()}/x.txt"
    assert "failed" in (await refused(att(closed), LOCAL)).message
    assert (
        "disabled on this server"
        in (await refused(att(f"{server}/notes.txt"), AttachmentConfig(allow_http=False))).message
    )


async def test_the_size_limit_is_enforced_while_the_body_streams(server):
    error = await refused(att(f"{server}/endless"), AttachmentConfig(max_bytes=64 * 1024, **FROM_LOCAL_SERVER))
    assert "larger" in error.message and "65536" in error.message


async def test_a_stalled_server_times_out(server):
    error = await refused(att(f"{server}/stall"), AttachmentConfig(http_timeout_s=0.2, **FROM_LOCAL_SERVER))
    assert "failed" in error.message and "attachments.http_timeout_s" in error.message


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- several attachments, whole dialogs ---------------------------------------------------------------------


async def test_content_lists_mix_text_and_attachments(server):
    content = ["Summarize these:", att(data_url("one")), att(f"{server}/notes.txt"), "Be brief."]
    inlined = await AttachmentInliner(LOCAL).fetch([(content, "content")])
    assert inlined.inline(content, "content") == (
        "Summarize these:\n\n[Attachment: data:text/plain (inline) (text/plain)]\none\n[End of attachment]\n\n"
        f"[Attachment: {server}/notes.txt (text/plain)]\n{TEXT}\n[End of attachment]\n\nBe brief."
    )
    assert inlined(["a", "b"], "x") == "ab"  # strings alone are joined as they are


async def test_a_dialog_reports_the_first_bad_attachment_by_field_path(server):
    dialog = Dialog(
        message={
            "role": "user",
            "content": ["see", {"url": "https://example.com/x.png", "mime_type": "image/png"}],
            "tool_responses": [{"tool_name": "t", "content": {"url": data_url("r"), "mime_type": "text/plain"}}],
        },
        message_history=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": {"url": f"{server}/missing", "mime_type": "text/plain"}},
        ],
    )
    assert [where for _, where in dialog_contents(dialog)] == [
        "dialog.message_history[0].content",
        "dialog.message_history[1].content",
        "dialog.message.content",
        "dialog.message.tool_responses[0].content",
    ]
    with pytest.raises(BadRequestError) as error:
        await AttachmentInliner(AttachmentConfig()).fetch(dialog_contents(dialog), model="smollm2")
    # The image is known to be refused before anything is fetched.
    assert error.value.message.startswith("dialog.message.content[1]: an image attachment (image/png)")
    history_only = Dialog(message={"role": "user", "content": "x"}, message_history=dialog.message_history)
    with pytest.raises(BadRequestError, match=r"^dialog.message_history\[1\].content: fetching .* failed"):
        await AttachmentInliner(LOCAL).fetch(dialog_contents(history_only))


async def test_the_same_url_is_fetched_once(server):
    url = f"{server}/notes.txt"
    inlined = await AttachmentInliner(LOCAL).fetch([(att(url), "a"), ([att(url)], "b")])
    assert TEXT in inlined(att(url), "a")


def test_inline_without_fetch_fails_loudly_and_text_needs_no_fetch():
    assert InlinedAttachments()("plain", "content") == "plain"
    with pytest.raises(BadRequestError, match="text-only"):
        InlinedAttachments()(att("https://example.com/x.png", "image/png"), "content")
    with pytest.raises(RuntimeError, match="not fetched"):
        InlinedAttachments()(att("https://example.com/x.txt"), "content")


def test_config_is_strict_and_documented():
    with pytest.raises(ValidationError):
        AttachmentConfig(max_byte=1)
    with pytest.raises(ValidationError):
        AttachmentConfig(max_bytes=0)
    assert AttachmentConfig().max_bytes == 1024 * 1024 and AttachmentConfig().file_roots == []
    assert all(field.description for field in AttachmentConfig.model_fields.values())
