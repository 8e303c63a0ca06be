"""Text attachments inlined into the prompt, for models that read text only.

A request's content may hold attachments (``{"url": ..., "mime_type": ...}``). Text ones are fetched and
put into the prompt between a header naming the URL and an end marker (:data:`ATTACHMENT_BLOCK`); any
other kind is refused with 400 naming the field, an image saying the model reads text only.

Where text comes from:

- ``data:`` URLs, base64 (``data:text/plain;base64,SGk=``) or percent-encoded (``data:,Hi%21``);
- ``file://`` URLs, only for files inside one of ``file_roots`` once symlinks and ``..`` are resolved
  (no roots configured: ``file://`` is refused);
- ``http://`` and ``https://`` URLs, fetched with httpx, redirects followed, the body read while it
  streams and abandoned as soon as it passes ``max_bytes``.

Use (two steps, so that fetching is async and rendering a prompt stays a plain function)::

    inliner = AttachmentInliner(config.attachments)
    inlined = await inliner.fetch(dialog_contents(request.dialog), model=request.model)
    text = inlined.inline(message.content, "dialog.message.content")   # or inlined(content, where)

``fetch`` checks and fetches every attachment (concurrently, each URL once) and raises the first
problem in field order; ``inline`` is then synchronous and never does I/O.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from llama_stack.apis.common import Attachment, Content, Dialog
from llama_stack.apis.errors import BadRequestError

__all__ = [
    "ATTACHMENT_BLOCK",
    "AttachmentConfig",
    "AttachmentInliner",
    "InlinedAttachments",
    "dialog_contents",
    "is_text_mime_type",
]

MIB = 1024 * 1024

# How an attachment's text appears in the prompt.
ATTACHMENT_BLOCK = "[Attachment: {name} ({mime_type})]\n{text}\n[End of attachment]"

_TEXT_APPLICATION_TYPES = {
    "application/json",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/toml",
    "application/javascript",
    "application/x-ndjson",
}


class AttachmentConfig(BaseModel):
    """How a provider fetches text attachments (the ``attachments:`` block of its config)."""

    model_config = ConfigDict(extra="forbid")

    file_roots: list[Path] = Field(
        default_factory=list,
        description=(
            "Folders whose files file:// attachments may name (after resolving symlinks and '..'); "
            "empty refuses file:// attachments."
        ),
    )
    max_bytes: int = Field(
        default=MIB,
        ge=1,
        description="The largest attachment read, in bytes (after base64 decoding for data: URLs); larger ones get 400.",
    )
    http_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds allowed to connect to, and then between reads from, an http(s):// attachment's server.",
    )
    allow_http: bool = Field(
        default=True,
        description="Fetch http:// and https:// attachments; false refuses them (the server then reaches no URL a client names).",
    )


def is_text_mime_type(mime_type: str) -> bool:
    """text/*, JSON, XML, YAML and a few other textual application types."""
    essence = mime_type.split(";", 1)[0].strip().lower()
    if essence.startswith("text/") or essence in _TEXT_APPLICATION_TYPES:
        return True
    return essence.startswith("application/") and essence.endswith(("+json", "+xml"))


def _charset(mime_type: str | None) -> str | None:
    for param in (mime_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None


def _display_name(url: str) -> str:
    if url.startswith("data:"):
        header = url[5:].partition(",")[0]
        return f"data:{header.split(';', 1)[0] or 'text/plain'} (inline)"
    return url


def dialog_contents(dialog: Dialog, where: str = "dialog") -> list[tuple[Content, str]]:
    """Every content of a dialog (messages and tool responses) with its field path, in order."""
    items: list[tuple[Content, str]] = []
    messages = [*((f"{where}.message_history[{i}]", m) for i, m in enumerate(dialog.message_history)), (f"{where}.message", dialog.message)]
    for at, message in messages:
        items.append((message.content, f"{at}.content"))
        for index, response in enumerate(message.tool_responses):
            items.append((response.content, f"{at}.tool_responses[{index}].content"))
    return items


def attachments_of(content: Content, where: str) -> Iterable[tuple[Attachment, str]]:
    """Each attachment of the content with its field path (``where``, and the part's index in a list)."""
    if isinstance(content, Attachment):
        yield content, where
    elif isinstance(content, list):
        for index, part in enumerate(content):
            if isinstance(part, Attachment):
                yield part, f"{where}[{index}]"


def _bad(where: str, message: str) -> BadRequestError:
    return BadRequestError(f"{where}: {message}", details=[{"loc": where, "in": "body", "message": message}])


def _check_kind(attachment: Attachment, where: str, model: str | None, mime_type: str | None = None) -> None:
    mime_type = mime_type or attachment.mime_type
    essence = mime_type.split(";", 1)[0].strip().lower()
    who = f"model {model!r}" if model else "this model"
    if essence.startswith("image/"):
        raise _bad(where, f"an image attachment ({essence}) cannot be read: {who} is text-only; send images to a model that accepts them")
    if not is_text_mime_type(mime_type):
        raise _bad(
            where,
            f"a {essence or 'untyped'} attachment cannot be read: {who} is text-only and only text attachments "
            "(text/*, application/json, XML, YAML) are inlined",
        )


class InlinedAttachments:
    """Content to text, with the attachments fetched by :meth:`AttachmentInliner.fetch`."""

    def __init__(self, texts: dict[str, str] | None = None):
        self._texts = dict(texts or {})

    def inline(self, content: Content, where: str) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, Attachment):
            return self._block(content, where)
        pieces: list[str] = []
        previous_was_attachment = False
        for index, part in enumerate(content):
            if isinstance(part, str):
                if previous_was_attachment and part:
                    pieces.append("\n\n")
                pieces.append(part)
                previous_was_attachment = False
            else:
                if pieces and pieces[-1]:
                    pieces.append("\n\n")
                pieces.append(self._block(part, f"{where}[{index}]"))
                previous_was_attachment = True
        return "".join(pieces)

    __call__ = inline

    def _block(self, attachment: Attachment, where: str) -> str:
        _check_kind(attachment, where, None)
        if attachment.url not in self._texts:
            raise RuntimeError(f"{where}: attachment {attachment.url!r} was not fetched (call AttachmentInliner.fetch first)")
        return ATTACHMENT_BLOCK.format(
            name=_display_name(attachment.url), mime_type=attachment.mime_type, text=self._texts[attachment.url]
        )


class AttachmentInliner:
    """Fetches text attachments as its :class:`AttachmentConfig` allows."""

    def __init__(self, config: AttachmentConfig, *, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self._transport = transport

    async def fetch(self, contents: Iterable[tuple[Content, str]], *, model: str | None = None) -> InlinedAttachments:
        """Check every attachment in ``contents`` (content, field path) and read the text ones.

        Raises BadRequestError (400) for the first attachment, in field order, that is not text or
        cannot be read, naming its field path.
        """
        wanted: dict[str, tuple[Attachment, str]] = {}
        for content, where in contents:
            for attachment, at in attachments_of(content, where):
                _check_kind(attachment, at, model)
                wanted.setdefault(attachment.url, (attachment, at))
        if not wanted:
            return InlinedAttachments()
        client = None
        if any(url.split(":", 1)[0].lower() in ("http", "https") for url in wanted):
            client = httpx.AsyncClient(
                timeout=self.config.http_timeout_s, follow_redirects=True, max_redirects=5, transport=self._transport
            )
        try:
            results = await asyncio.gather(
                *(self._read(attachment, at, model, client) for attachment, at in wanted.values()), return_exceptions=True
            )
        finally:
            if client is not None:
                await client.aclose()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return InlinedAttachments(dict(zip(wanted, results)))  # type: ignore[arg-type]

    async def _read(self, attachment: Attachment, where: str, model: str | None, client: httpx.AsyncClient | None) -> str:
        url = attachment.url
        scheme = url.split(":", 1)[0].lower()
        if scheme == "data":
            data, mime_type = self._read_data(url, where)
        elif scheme == "file":
            data, mime_type = await asyncio.to_thread(self._read_file, url, where)
        elif scheme in ("http", "https"):
            assert client is not None
            data, mime_type = await self._read_http(client, url, where)
        else:
            raise _bad(where, f"unsupported attachment URL scheme {scheme!r}; use data:, file:// or http(s)://")
        if mime_type and (scheme == "data" or mime_type.strip().lower().startswith("image/")):
            # What the data says it is counts too; a server's Content-Type only when it is an image
            # (servers label text files application/octet-stream often enough).
            _check_kind(attachment, where, model, mime_type)
        charset = _charset(attachment.mime_type) or _charset(mime_type) or "utf-8"
        try:
            text = data.decode(charset)
        except LookupError:
            raise _bad(where, f"unknown charset {charset!r}") from None
        except UnicodeDecodeError as exc:
            raise _bad(where, f"the attachment is not valid {charset} text ({exc.reason} at byte {exc.start})") from None
        return text.removeprefix("\ufeff")

    def _too_large(self, where: str, size: str) -> BadRequestError:
        return _bad(where, f"the attachment is larger ({size}) than the {self.config.max_bytes} bytes allowed (attachments.max_bytes)")

    def _read_data(self, url: str, where: str) -> tuple[bytes, str | None]:
        header, comma, payload = url[5:].partition(",")
        if not comma:
            raise _bad(where, "a data: URL needs a comma before its data (data:[<mime type>][;base64],<data>)")
        params = header.split(";")
        is_base64 = params[-1].strip().lower() == "base64"
        mime_type = ";".join(params[:-1] if is_base64 else params).strip() or None
        if is_base64:
            encoded = urllib.parse.unquote_to_bytes(payload)
            encoded = b"".join(encoded.split())
            if len(encoded) // 4 * 3 > self.config.max_bytes + 2:
                raise self._too_large(where, f"about {len(encoded) // 4 * 3} bytes")
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _bad(where, f"the data: URL's base64 data is invalid: {exc}") from None
        else:
            data = urllib.parse.unquote_to_bytes(payload)
        if len(data) > self.config.max_bytes:
            raise self._too_large(where, f"{len(data)} bytes")
        return data, mime_type

    def _read_file(self, url: str, where: str) -> tuple[bytes, str | None]:
        if not self.config.file_roots:
            raise _bad(where, "file:// attachments are refused: the provider has no attachments.file_roots configured")
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise _bad(where, f"file:// URLs name a local file; got host {parts.netloc!r}")
        path = Path(urllib.request.url2pathname(parts.path))
        if not path.is_absolute():
            raise _bad(where, f"a file:// URL needs an absolute path, got {parts.path!r}")
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise _bad(where, f"file {str(path)!r} does not exist") from None
        roots = [Path(root).expanduser().resolve() for root in self.config.file_roots]
        if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(str(r) for r in roots)
            raise _bad(where, f"file {str(path)!r} is outside the folders attachments may come from ({allowed})")
        if not resolved.is_file():
            raise _bad(where, f"{str(path)!r} is not a regular file")
        try:
            with resolved.open("rb") as handle:
                data = handle.read(self.config.max_bytes + 1)
        except OSError as exc:
            raise _bad(where, f"file {str(path)!r} cannot be read: {exc.strerror}") from None
        if len(data) > self.config.max_bytes:
            raise self._too_large(where, f"over {self.config.max_bytes} bytes")
        return data, None

    async def _read_http(self, client: httpx.AsyncClient, url: str, where: str) -> tuple[bytes, str | None]:
        if not self.config.allow_http:
            raise _bad(where, "http(s):// attachments are refused by this provider (attachments.allow_http is false)")
        try:
            async with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise _bad(where, f"fetching {url} failed: HTTP {response.status_code}")
                mime_type = response.headers.get("content-type")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
                    raise self._too_large(where, f"{declared} bytes")
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > self.config.max_bytes:
                        raise self._too_large(where, f"over {self.config.max_bytes} bytes")
                return bytes(body), mime_type
        except httpx.HTTPError as exc:
            raise _bad(where, f"fetching {url} failed: {type(exc).__name__}: {exc}") from None
